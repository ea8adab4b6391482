//! The Entra admin center's bulk member templates (Groups > a group > Bulk operations > Import members /
//! Remove members).
//!
//! Each file is: an optional `version:v1.0` line (older templates and many scripts expect it; the current
//! documentation's template starts with the header), the header
//! `Member object ID or user principal name [memberObjectIdOrUpn] Required`, then one member per row, by object
//! id. Lines end with CRLF (RFC 4180). One upload takes at most [`MAX_ROWS`] members, so a longer list is split into
//! `…-part1.csv`, `…-part2.csv`, ….

use crate::plan::{Action, GroupPlan, Plan};

use super::{Export, ExportFile};

/// The header row of both templates.
pub const HEADER: &str = "Member object ID or user principal name [memberObjectIdOrUpn] Required";
/// The older first line.
pub const VERSION_ROW: &str = "version:v1.0";
/// The most members one upload takes.
pub const MAX_ROWS: usize = 40_000;

/// The file-name word for an action: `bulk-add` or `bulk-remove`.
pub fn action_word(action: Action) -> &'static str {
    match action {
        Action::Add => "bulk-add",
        Action::Remove => "bulk-remove",
    }
}

/// The bulk files for `action`, one set per group, named `<stem>.<group-id>.bulk-add.csv` (or `-partN` when
/// split). A group without a change of that kind gets a note instead of a file.
pub fn export(plan: &Plan, stem: &str, action: Action, version_row: bool) -> Export {
    export_with_limit(plan, stem, action, version_row, MAX_ROWS)
}

/// Like [`export`] with another row limit (for tests).
pub fn export_with_limit(plan: &Plan, stem: &str, action: Action, version_row: bool, max_rows: usize) -> Export {
    let max_rows = max_rows.max(1);
    let mut out = Export::default();
    for group in &plan.groups {
        let ids: Vec<String> = group.changes_of(action).map(|c| c.user_id.to_string()).collect();
        if ids.is_empty() {
            out.notes.push(format!(
                "{}: no {}s in the plan, so no {} file",
                group.label(),
                action.as_str(),
                action_word(action)
            ));
            continue;
        }
        let parts: Vec<&[String]> = ids.chunks(max_rows).collect();
        let split = parts.len() > 1;
        for (index, part) in parts.iter().enumerate() {
            let name = file_name(stem, group, action, split.then_some(index + 1));
            out.files.push(ExportFile {
                name,
                bytes: render(part, version_row).into_bytes(),
                changes: part.len(),
                group: Some(group.label()),
            });
        }
    }
    out
}

fn file_name(stem: &str, group: &GroupPlan, action: Action, part: Option<usize>) -> String {
    let part = part.map(|n| format!("-part{n}")).unwrap_or_default();
    format!("{stem}.{}.{}{part}.csv", group.group_id, action_word(action))
}

/// The text of one file.
pub fn render(ids: &[String], version_row: bool) -> String {
    let mut text = String::with_capacity(40 * (ids.len() + 2));
    if version_row {
        text.push_str(VERSION_ROW);
        text.push_str("\r\n");
    }
    text.push_str(HEADER);
    text.push_str("\r\n");
    for id in ids {
        text.push_str(id);
        text.push_str("\r\n");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::sample_plan;

    #[test]
    fn one_file_per_group_per_action_with_the_header_and_ids_only() {
        let plan = sample_plan();
        let adds = export(&plan, "p", Action::Add, false);
        assert!(!adds.files.is_empty());
        for file in &adds.files {
            let text = String::from_utf8(file.bytes.clone()).unwrap();
            let mut lines = text.split("\r\n");
            assert_eq!(lines.next(), Some(HEADER));
            let rows: Vec<&str> = lines.filter(|l| !l.is_empty()).collect();
            assert_eq!(rows.len(), file.changes);
            for row in rows {
                crate::identity::ObjectId::parse(row).unwrap();
            }
            assert!(file.name.starts_with("p.") && file.name.ends_with(".bulk-add.csv"), "{}", file.name);
        }
        let with_version = export(&plan, "p", Action::Add, true);
        assert!(with_version.files.iter().all(|f| f.bytes.starts_with(b"version:v1.0\r\nMember object ID")));
    }

    #[test]
    fn a_group_without_changes_of_the_kind_gets_a_note() {
        let mut plan = sample_plan();
        for g in &mut plan.groups {
            g.changes.retain(|c| c.action == Action::Add);
        }
        let removes = export(&plan, "p", Action::Remove, false);
        assert!(removes.files.is_empty());
        assert_eq!(removes.notes.len(), plan.groups.len());
        assert!(removes.notes.iter().all(|n| n.contains("no removes")), "{:?}", removes.notes);
    }

    #[test]
    fn splits_into_numbered_parts() {
        let plan = sample_plan();
        let group = &plan.groups[0];
        let n = group.changes_of(Action::Add).count();
        assert!(n >= 2);
        let out = export_with_limit(&plan, "p", Action::Add, false, 1);
        let names: Vec<&str> = out
            .files
            .iter()
            .filter(|f| f.name.contains(&group.group_id.to_string()))
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(names.len(), n);
        assert!(names[0].ends_with(".bulk-add-part1.csv") && names[1].ends_with(".bulk-add-part2.csv"), "{names:?}");
    }
}
