//! What `audit` prints: the archive's plans as a table (who planned, approved and applied each), then one line per
//! finding; and the same as CSV for spreadsheets.

use std::path::Path;

use crate::audit::AuditReport;
use crate::identity::EntraActor;
use crate::plan::csv::neutralize;
use crate::plan::timestamp;
use crate::terminal::{escape, table, Column};

fn day(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M").to_string()
}

fn count(n: Option<u64>) -> String {
    n.map(|n| n.to_string()).unwrap_or_else(|| "-".into())
}

/// The table and the findings, for people.
pub fn render(dir: &Path, report: &AuditReport, width: Option<u16>) -> String {
    let f = &report.files;
    let mut out = format!(
        "Archive: {} ({} plans, {} approvals, {} receipts, {} journals, {} signature files)\n",
        dir.display(),
        f.plans,
        f.approvals,
        f.receipts,
        f.journals,
        f.signatures
    );
    if report.plans.is_empty() {
        out.push_str("No plans found.\n");
    } else {
        // Plans, signers and appliers are names and files that must read whole; the approvers give way first.
        let columns = [
            Column::keep("Plan\ncreated (UTC)"),
            Column::keep("Signer\nEntra actor"),
            Column::shorten("Approvers", 1),
            Column::keep("Applied by\nEntra actor\nat (UTC)"),
            Column::number("Applied\nfailed\nskipped"),
        ];
        let rows: Vec<Vec<String>> = report
            .plans
            .iter()
            .map(|row| {
                let approvers: Vec<_> = row.approvers.iter().map(|a| escape(a)).collect();
                let approvers = if approvers.is_empty() { "-".to_string() } else { approvers.join("\n") };
                let applied_by = match (&row.applied_by, row.mode.as_deref()) {
                    (Some(by), Some("manual-verified")) => format!("{}\n(manual, verified)", escape(by)),
                    (Some(by), _) => escape(by).into_owned(),
                    (None, _) => "not applied".into(),
                };
                let at = row.applied_at.as_ref().map(day).unwrap_or_else(|| "-".into());
                let entra = |actor: &Option<EntraActor>| {
                    actor.as_ref().map(|a| escape(&a.short_label()).into_owned()).unwrap_or_else(|| "-".into())
                };
                let applied_entra = if row.applied_by.is_some() {
                    format!("\n{}", entra(&row.applied_by_entra))
                } else {
                    String::new()
                };
                vec![
                    format!("{}\n{}", escape(&row.plan_file), day(&row.created_at)),
                    format!("{}\n{}", escape(&row.signer), entra(&row.signer_entra)),
                    approvers,
                    format!("{applied_by}{applied_entra}\n{at}"),
                    format!("{}\n{}\n{}", count(row.applied), count(row.failed), count(row.skipped)),
                ]
            })
            .collect();
        let table = table(&columns, &rows, width);
        out.push_str(&table.to_string());
        out.push('\n');
    }
    if report.findings.is_empty() {
        out.push_str("Findings: none. Every signature is valid and allowed, and the archive adds up.\n");
    } else {
        out.push_str(&format!("Findings: {}\n", report.findings.len()));
        for finding in &report.findings {
            out.push_str(&format!("{}\n", crate::terminal::escape(&finding.to_string())));
        }
    }
    out
}

/// The CSV: one `plan` record per plan, then one `finding` record per finding, in one set of columns. Every cell
/// is neutralized against spreadsheet formula injection.
pub fn to_csv(report: &AuditReport) -> Vec<u8> {
    const HEADER: [&str; 19] = [
        "record",
        "plan_file",
        "plan_id",
        "plan_sha256",
        "signer",
        "signer_entra_actor",
        "signature_valid",
        "created_at",
        "approvers",
        "receipt_file",
        "mode",
        "applied_by",
        "applied_by_entra_actor",
        "applied_at",
        "applied",
        "failed",
        "skipped",
        "location",
        "finding",
    ];
    let mut rows: Vec<Vec<String>> = vec![HEADER.iter().map(|s| s.to_string()).collect()];
    let opt = |n: Option<u64>| n.map(|n| n.to_string()).unwrap_or_default();
    for p in &report.plans {
        rows.push(vec![
            "plan".into(),
            p.plan_file.clone(),
            p.plan_id.to_string(),
            p.sha256.clone(),
            p.signer.clone(),
            p.signer_entra.as_ref().map(EntraActor::label).unwrap_or_default(),
            p.signature_valid.to_string(),
            timestamp::format(&p.created_at),
            p.approvers.join("; "),
            p.receipt_file.clone().unwrap_or_default(),
            p.mode.clone().unwrap_or_default(),
            p.applied_by.clone().unwrap_or_default(),
            p.applied_by_entra.as_ref().map(EntraActor::label).unwrap_or_default(),
            p.applied_at.as_ref().map(timestamp::format).unwrap_or_default(),
            opt(p.applied),
            opt(p.failed),
            opt(p.skipped),
            String::new(),
            String::new(),
        ]);
    }
    for f in &report.findings {
        let mut row = vec![String::new(); HEADER.len()];
        if let Some(cell) = row.first_mut() {
            *cell = "finding".into();
        }
        if let Some(cell) = row.get_mut(HEADER.len() - 2) {
            *cell = f.location();
        }
        if let Some(cell) = row.last_mut() {
            *cell = f.message.clone();
        }
        rows.push(row);
    }
    let mut writer = csv::Writer::from_writer(Vec::new());
    for row in &rows {
        // Writing to memory does not fail; a failure would only drop the row.
        let _ = writer.write_record(row.iter().map(|c| neutralize(c).into_owned()));
    }
    writer.into_inner().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Finding, PlanRow};

    #[test]
    fn csv_neutralizes_formulas_and_keeps_one_column_set() {
        let report = AuditReport {
            plans: vec![PlanRow {
                plan_file: "=HYPERLINK(\"x\").json".into(),
                plan_id: uuid::Uuid::from_u128(1),
                sha256: "ab".into(),
                signer: "@evil".into(),
                signature_valid: true,
                signer_entra: None,
                created_at: timestamp::parse("2026-01-01T00:00:00Z").unwrap(),
                approvers: vec!["a@x".into(), "b@x".into()],
                receipt_file: None,
                mode: None,
                applied_by: None,
                applied_by_entra: None,
                applied_at: None,
                applied: Some(3),
                failed: None,
                skipped: None,
            }],
            findings: vec![Finding { file: "j.jsonl".into(), line: Some(3), seq: Some(2), message: "-bad".into() }],
            files: Default::default(),
        };
        let text = String::from_utf8(to_csv(&report)).unwrap();
        let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(text.as_bytes());
        let records: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
        assert_eq!(records.len(), 2);
        assert_eq!(&records[0][1], "'=HYPERLINK(\"x\").json");
        assert_eq!(&records[0][4], "'@evil");
        assert_eq!(&records[0][5], "");
        assert_eq!(&records[0][8], "a@x; b@x");
        assert_eq!(&records[1][0], "finding");
        assert_eq!(&records[1][17], "j.jsonl, line 3 (seq 2)");
        assert_eq!(&records[1][18], "'-bad");
    }
}
