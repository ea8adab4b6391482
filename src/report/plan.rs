//! What `plan` prints when it is done: the files it wrote (or that it wrote none, with `--detailed-exitcode` and
//! nothing to change), the totals, and the summary table; or the same as JSON with `--json`.

use std::path::Path;

use crate::plan::{timestamp, Plan};
use crate::terminal::escape;

/// Where a plan went: the plan file, its signature and, when asked for, the plan file's SHA-256.
#[derive(Debug, Clone, Copy)]
pub struct Files<'a> {
    /// The plan file.
    pub plan: &'a Path,
    /// The signature beside it.
    pub signature: &'a Path,
    /// The SHA-256 (hex) of the plan file.
    pub sha256: Option<&'a str>,
}

/// The `plan --json` summary. `files` is `None` when no plan was written (nothing to change): then `plan`,
/// `signature`, `plan_sha256` are `null` and `written` is false.
pub fn summary_json(plan: &Plan, files: Option<Files<'_>>) -> serde_json::Value {
    let groups: Vec<serde_json::Value> = plan
        .groups
        .iter()
        .map(|g| {
            serde_json::json!({
                "group_id": g.group_id,
                "display_name": g.display_name,
                "member_count": g.precondition.member_count,
                "counts": g.counts,
            })
        })
        .collect();
    let path = |p: &Path| p.display().to_string();
    serde_json::json!({
        "written": files.is_some(),
        "plan": files.map(|f| path(f.plan)),
        "signature": files.map(|f| path(f.signature)),
        "plan_id": plan.plan_id,
        "plan_sha256": files.and_then(|f| f.sha256),
        "signer": plan.signer,
        "expires_at": timestamp::format(&plan.expires_at),
        "groups": groups,
    })
}

/// The text summary: what was written (or that nothing was, as no group has a change), the totals, the table of
/// groups, the entries not acted on, and what to do next.
pub fn summary_text(plan: &Plan, files: Option<Files<'_>>, width: Option<u16>) -> String {
    let mut out = String::new();
    let (adds, removes) = plan.totals();
    match files {
        Some(f) => {
            out.push_str(&format!("Wrote {} and {}\n", f.plan.display(), f.signature.display()));
            out.push_str(&format!(
                "Plan {}: {adds} adds, {removes} removes, signed by {}, valid until {}\n",
                plan.plan_id,
                escape(&plan.signer),
                plan.expires_at.format("%Y-%m-%d %H:%M UTC")
            ));
        }
        None => out.push_str("No changes: every group already matches its list, so no plan was written.\n"),
    }
    out.push_str(&format!("{}\n", super::summary_table(plan, width)));
    let skipped: u64 = plan.groups.iter().map(|g| g.counts.not_acted_on_total()).sum();
    if skipped > 0 {
        let by_kind = super::review::skipped_by_kind(|kind| {
            plan.groups.iter().filter_map(|g| g.counts.not_acted_on.get(&kind)).sum()
        });
        let will = if files.is_some() { "will not be" } else { "are not" };
        out.push_str(&format!("{skipped} entries {will} acted on: {}.\n", by_kind.join(", ")));
    }
    if let Some(f) = files {
        out.push_str(&format!("Review it with: writeback show {}\n", f.plan.display()));
        out.push_str(&format!("Then hand {} and {} to your IT admin.\n", f.plan.display(), f.signature.display()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::sample_plan;

    #[test]
    fn without_files_it_says_nothing_was_written() {
        let mut plan = sample_plan();
        for g in &mut plan.groups {
            g.changes.clear();
        }
        let text = summary_text(&plan, None, Some(100));
        assert!(text.starts_with("No changes:"), "{text}");
        assert!(!text.contains("Wrote") && !text.contains("hand"), "{text}");
        let json = summary_json(&plan, None);
        assert_eq!(json["written"], false);
        assert!(json["plan"].is_null() && json["signature"].is_null());
        let sig = crate::archive::signature_path(Path::new("p.json"));
        let files = Files { plan: Path::new("p.json"), signature: &sig, sha256: Some("ab") };
        let json = summary_json(&plan, Some(files));
        assert_eq!((json["written"].as_bool(), json["plan_sha256"].as_str()), (Some(true), Some("ab")));
        let text = summary_text(&plan, Some(files), Some(100));
        assert!(text.starts_with(&format!("Wrote p.json and {}\n", sig.display())), "{text}");
    }
}
