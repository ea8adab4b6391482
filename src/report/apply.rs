//! What `apply` prints: the gates' report under the review, the dry run's table (and its JSON), and the final
//! summary of a run.

use std::path::Path;

use comfy_table::{presets, Cell, CellAlignment, ContentArrangement, Table};

use crate::apply::executor::Estimate;
use crate::apply::gates::GroupWork;
use crate::apply::run::Review;
use crate::apply::session::{Finished, Prepared};
use crate::report::review::{render_review, SignatureStatus};
use crate::terminal::escape;

/// The review `apply` shows before it asks: the plan's summary and tables, then the gates' report.
pub fn review_text(review: &Review<'_>, width: u16) -> String {
    let verified = review.verified;
    let status =
        SignatureStatus::Valid { principal: verified.principal.clone(), fingerprint: verified.fingerprint.clone() };
    let mut text = render_review(&verified.plan, &verified.sha256, &status, review.now, width);
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
    if work.drift.is_empty() {
        return;
    }
    out.push_str(&format!(
        "Drift in {}: {} joined and {} left since planning\n",
        escape(&work.label),
        work.drift.joined.len(),
        work.drift.left.len()
    ));
    const SHOW: usize = 10;
    for (sign, ids) in [("+", &work.drift.joined), ("-", &work.drift.left)] {
        for id in ids.iter().take(SHOW) {
            out.push_str(&format!("  {sign} {id}\n"));
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

/// What a dry run would send, as a table of requests.
pub fn dry_run_report(prepared: &Prepared, estimate: &Estimate, ppb: usize) -> String {
    let mut out = String::from("\nDry run: nothing was sent and nothing was written. A run would send:\n");
    let mut table = Table::new();
    table.load_preset(presets::UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Dynamic);
    table.set_header(["Request", "Count", "Graph writes"]);
    let right = |n: u64| Cell::new(n).set_alignment(CellAlignment::Right);
    table.add_row(vec![
        Cell::new("PATCH /groups/{id} (members@odata.bind, ≤20 each)"),
        right(estimate.patches),
        right(estimate.patches),
    ]);
    table.add_row(vec![
        Cell::new("DELETE /groups/{id}/members/{user}/$ref"),
        right(estimate.deletes),
        right(estimate.deletes),
    ]);
    table.add_row(vec![
        Cell::new(format!("POST /$batch (≤20 items, ≤{ppb} PATCHes)")),
        right(estimate.requests),
        right(0),
    ]);
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
pub fn summary(finished: &Finished, receipt_path: &Path, signed: bool, width: u16) -> String {
    let receipt = &finished.receipt;
    let mut out = String::from("\n");
    let mut table = Table::new();
    table
        .load_preset(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_width(width);
    table.set_header(["Group", "Applied", "Already member", "Already absent", "Failed"]);
    let right = |n: u64| Cell::new(n).set_alignment(CellAlignment::Right);
    for g in &receipt.groups {
        let name = g.display_name.clone().unwrap_or_else(|| g.group_id.to_string());
        table.add_row(vec![
            Cell::new(escape(&name)),
            right(g.counts.applied),
            right(g.counts.already_member),
            right(g.counts.already_absent),
            right(g.counts.failed),
        ]);
    }
    if receipt.groups.len() > 1 {
        let c = receipt.counts;
        table.add_row(vec![
            Cell::new("Total"),
            right(c.applied),
            right(c.already_member),
            right(c.already_absent),
            right(c.failed),
        ]);
    }
    out.push_str(&table.to_string());
    out.push('\n');
    let failures: Vec<_> = receipt.failures().collect();
    if !failures.is_empty() {
        let mut t = Table::new();
        t.load_preset(presets::UTF8_FULL_CONDENSED)
            .set_content_arrangement(ContentArrangement::Dynamic)
            .set_width(width);
        t.set_header(["Failed", "User", "Reason", "Graph error", "request-id"]);
        for (_, c) in &failures {
            let err = c.error.as_ref();
            t.add_row(vec![
                Cell::new(c.action.as_str()),
                Cell::new(escape(&c.upn)),
                Cell::new(escape(c.detail.as_deref().unwrap_or_default())),
                Cell::new(
                    err.map(|e| {
                        format!(
                            "{} {}: {}",
                            e.status,
                            escape(e.code.as_deref().unwrap_or_default()),
                            escape(e.message.as_deref().unwrap_or_default())
                        )
                    })
                    .unwrap_or_default(),
                ),
                Cell::new(escape(err.and_then(|e| e.request_id.as_deref()).unwrap_or_default())),
            ]);
        }
        out.push_str(&t.to_string());
        out.push('\n');
    }
    let s = &finished.stats;
    out.push_str(&format!(
        "Status     {}{}\n",
        receipt.status.as_str(),
        if finished.resumed { " (resumed an interrupted apply)" } else { "" }
    ));
    out.push_str(&format!(
        "Sent       {} $batch request(s): {} PATCH, {} DELETE $ref; {} throttled, {} retried, {} split\n",
        s.requests, s.patches, s.deletes, s.throttled, s.retried, s.splits
    ));
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
