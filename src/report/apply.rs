//! What `apply` prints: the gates' report under the review, the dry run's table (and its JSON), and the final
//! summary of a run.

use std::path::Path;

use crate::terminal::{escape, table, Column};

use crate::apply::executor::Estimate;
use crate::apply::gates::GroupWork;
use crate::apply::run::Review;
use crate::apply::session::{Finished, Prepared};
use crate::identity::ObjectId;
use crate::report::review::{render_review_live, SignatureStatus};

/// The review `apply` shows before it asks: the plan's summary and tables, then the gates' report.
pub fn review_text(review: &Review<'_>, width: Option<u16>) -> String {
    let verified = review.verified;
    let status =
        SignatureStatus::Valid { principal: verified.principal.clone(), fingerprint: verified.fingerprint.clone() };
    // Graph's names of the groups, read by the gates: the review shows them, and the plan's label where it differs.
    let live: Vec<Option<&str>> = review.prepared.works.iter().map(|w| w.live_name.as_deref()).collect();
    let mut text = render_review_live(&verified.plan, &verified.sha256, &status, review.now, width, &live);
    text.push_str(&gate_report(review.prepared, review.estimate, review.journal));
    text
}

/// The question `apply` asks before it sends anything.
pub fn confirm_question(review: &Review<'_>) -> String {
    let estimate = review.estimate;
    format!(
        "\nApply plan {} to tenant {}: {} adds and {} removes ({} Graph writes)? Type 'yes' to apply: ",
        review.plan().plan_id,
        review.prepared.tenant_id,
        estimate.adds,
        estimate.removes,
        estimate.writes
    )
}

/// The lines under the review: which gates passed, what an earlier run recorded, the drift, and what will be sent.
pub fn gate_report(prepared: &Prepared, estimate: &Estimate, journal: &Path) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "Gates passed: signature, format, expiry, tenant {}, groups, replay, drift, thresholds\n",
        prepared.tenant_id
    ));
    if prepared.resuming() {
        let recorded: u64 = prepared.works.iter().map(|w| w.recorded).sum();
        out.push_str(&format!(
            "Resuming: {} earlier run(s) recorded {recorded} outcome(s) in {}; those changes are not sent again\n",
            prepared.progress.runs,
            journal.display()
        ));
    }
    if !prepared.renames.is_empty() {
        out.push_str(&format!(
            "Renamed since planning (accepted with --accept-renames; the receipt lists them too): {}\n",
            prepared.renames.len()
        ));
        for rename in &prepared.renames {
            out.push_str(&format!(
                "  {} → {} {}\n",
                escape(&rename.planned_upn),
                escape(&rename.graph_upn),
                rename.user_id.short()
            ));
        }
    }
    for work in &prepared.works {
        drift_lines(&mut out, work);
    }
    out.push_str(&format!(
        "To send: {} adds and {} removes, {} already settled, in {} $batch request(s) carrying {} writes\n",
        estimate.adds,
        estimate.removes,
        prepared.works.iter().map(|w| w.settled.len()).sum::<usize>(),
        estimate.requests,
        estimate.writes
    ));
    out
}

fn drift_lines(out: &mut String, work: &GroupWork) {
    // The drift the gate judges: on a resumed run, the plan's own changes made by the earlier run are not drift.
    let drift = &work.strict_drift;
    if drift.is_empty() {
        return;
    }
    out.push_str(&format!(
        "Drift in {}: {} joined and {} left since planning\n",
        escape(work.live_name.as_deref().unwrap_or(&work.label)),
        drift.joined.len(),
        drift.left.len()
    ));
    const SHOW: usize = 10;
    for (sign, ids) in [("+", &drift.joined), ("-", &drift.left)] {
        for id in ids.iter().take(SHOW) {
            out.push_str(&format!("  {sign} {}\n", drift_user(work, id)));
        }
        if ids.len() > SHOW {
            out.push_str(&format!("  {sign} … and {} more\n", ids.len() - SHOW));
        }
    }
    if !work.settled.is_empty() {
        out.push_str(&format!(
            "  {} planned change(s) are already in effect and will be recorded without a write\n",
            work.settled.len()
        ));
    }
}

/// A user the drift names: UPN, name and short id when the reads found them, else the id.
fn drift_user(work: &GroupWork, id: &ObjectId) -> String {
    match work.names.get(id) {
        Some((upn, Some(name))) => format!("{} ({}) {}", escape(upn), escape(name), id.short()),
        Some((upn, None)) => format!("{} {}", escape(upn), id.short()),
        None => id.to_string(),
    }
}

/// What a dry run would send, as a table of requests.
pub fn dry_run_report(prepared: &Prepared, estimate: &Estimate, ppb: usize) -> String {
    let mut out = String::from("\nDry run: nothing was sent and nothing was written. A run would send:\n");
    let columns = [Column::keep("Request"), Column::number("Count"), Column::number("Graph writes")];
    let rows = vec![
        vec![
            "PATCH /groups/{id} (members@odata.bind, ≤20 each)".to_string(),
            estimate.patches.to_string(),
            estimate.patches.to_string(),
        ],
        vec![
            "DELETE /groups/{id}/members/{user}/$ref".to_string(),
            estimate.deletes.to_string(),
            estimate.deletes.to_string(),
        ],
        vec![format!("POST /$batch (≤20 items, ≤{ppb} PATCHes)"), estimate.requests.to_string(), "0".to_string()],
    ];
    // Short, fixed texts: laid out whole.
    let table = table(&columns, &rows, None);
    let settled: u64 = prepared.works.iter().map(|w| w.settled.len() as u64).sum();
    out.push_str(&table.to_string());
    out.push_str(&format!(
        "\n{} HTTP requests for the writes (plus the reads already made), {} writes; {settled} change(s) need no write\n",
        estimate.requests, estimate.writes
    ));
    out
}

/// The dry run as JSON (`apply --dry-run --json`).
#[derive(serde::Serialize)]
pub struct DryRunJson<'a> {
    dry_run: bool,
    tenant_id: &'a str,
    resuming: bool,
    estimate: &'a Estimate,
    settled: u64,
    groups: Vec<DryRunGroup<'a>>,
}

#[derive(serde::Serialize)]
struct DryRunGroup<'a> {
    group_id: &'a crate::identity::ObjectId,
    live_name: Option<&'a str>,
    adds: usize,
    removes: usize,
    settled: usize,
    recorded: u64,
    drift: &'a crate::apply::gates::Drift,
}

impl<'a> DryRunJson<'a> {
    /// The JSON for the gates' result and the estimate.
    pub fn new(prepared: &'a Prepared, estimate: &'a Estimate) -> Self {
        DryRunJson {
            dry_run: true,
            tenant_id: &prepared.tenant_id,
            resuming: prepared.resuming(),
            estimate,
            settled: prepared.works.iter().map(|w| w.settled.len() as u64).sum(),
            groups: prepared
                .works
                .iter()
                .map(|w| DryRunGroup {
                    group_id: &w.group_id,
                    live_name: w.live_name.as_deref(),
                    adds: w.adds.len(),
                    removes: w.removes.len(),
                    settled: w.settled.len(),
                    recorded: w.recorded,
                    drift: &w.drift,
                })
                .collect(),
        }
    }
}

/// The final summary: counts per group, every failure, and where the receipt and journal are.
pub fn summary(finished: &Finished, receipt_path: &Path, signed: bool, width: Option<u16>) -> String {
    let receipt = &finished.receipt;
    let mut out = String::from("\n");
    let columns = [
        Column::shorten("Group", 1),
        Column::number("Applied"),
        Column::number("Already member"),
        Column::number("Already absent"),
        Column::number("Failed"),
    ];
    let counts = |name: String, c: &crate::apply::OutcomeCounts| {
        vec![
            name,
            c.applied.to_string(),
            c.already_member.to_string(),
            c.already_absent.to_string(),
            c.failed.to_string(),
        ]
    };
    let mut rows: Vec<Vec<String>> = receipt
        .groups
        .iter()
        .map(|g| counts(escape(g.display_name.as_deref().unwrap_or(g.group_id.as_str())).into_owned(), &g.counts))
        .collect();
    if receipt.groups.len() > 1 {
        rows.push(counts("Total".into(), &receipt.counts));
    }
    out.push_str(&table(&columns, &rows, width).to_string());
    out.push('\n');
    let failures: Vec<_> = receipt.failures().collect();
    if !failures.is_empty() {
        let columns = [
            Column::keep("Failed"),
            Column::keep("User"),
            Column::shorten("Reason", 2),
            Column::shorten("Graph error", 1),
            Column::keep("request-id"),
        ];
        let rows: Vec<Vec<String>> = failures
            .iter()
            .map(|(_, c)| {
                let err = c.error.as_ref();
                vec![
                    c.action.as_str().to_string(),
                    escape(&c.upn).into_owned(),
                    escape(c.detail.as_deref().unwrap_or_default()).into_owned(),
                    err.map(|e| {
                        format!(
                            "{} {}: {}",
                            e.status,
                            escape(e.code.as_deref().unwrap_or_default()),
                            escape(e.message.as_deref().unwrap_or_default())
                        )
                    })
                    .unwrap_or_default(),
                    escape(err.and_then(|e| e.request_id.as_deref()).unwrap_or_default()).into_owned(),
                ]
            })
            .collect();
        out.push_str(&table(&columns, &rows, width).to_string());
        out.push('\n');
    }
    let s = &finished.stats;
    let c = &receipt.counts;
    out.push_str(&format!(
        "Changes    {} written, {} already settled (no write needed), {} retried, {} failed\n",
        c.applied,
        c.already_member + c.already_absent,
        s.retried,
        c.failed
    ));
    out.push_str(&format!(
        "Status     {}{}\n",
        receipt.status.as_str(),
        if finished.resumed { " (resumed an interrupted apply)" } else { "" }
    ));
    out.push_str(&format!(
        "Sent       {} $batch request(s): {} PATCH, {} DELETE $ref; {} throttled, {} retried, {} split\n",
        s.requests, s.patches, s.deletes, s.throttled, s.retried, s.splits
    ));
    if let Some(actor) = &receipt.entra_actor {
        out.push_str(&format!("Entra      {} wrote the changes\n", crate::terminal::escape(&actor.label())));
    }
    out.push_str(&format!(
        "Receipt    {}{}\n",
        receipt_path.display(),
        if signed { " (signed: .sig beside it)" } else { "" }
    ));
    out.push_str(&format!(
        "Journal    {} (head {}, seq {})\n",
        receipt.journal.path, receipt.journal.head, receipt.journal.seq
    ));
    out
}
