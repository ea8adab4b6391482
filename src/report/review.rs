//! The approver's review of a plan: a summary, then tables of adds, removes and entries not acted on, laid out
//! for the terminal's width ([`crate::terminal::table`]).

use chrono::{DateTime, Utc};
use comfy_table::Table;
use serde::Serialize;

use crate::identity::ObjectId;
use crate::plan::{timestamp, Action, Change, GroupPlan, Plan, SkipKind, Skipped};
use crate::terminal::{escape, table, Column};

/// What is known about a plan's signature when it is reviewed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum SignatureStatus {
    /// Verified against an allowed_signers file.
    Valid {
        /// The principal the allowed_signers file gives the key.
        principal: String,
        /// The key's fingerprint.
        fingerprint: String,
    },
    /// Checked and refused.
    Invalid {
        /// Why.
        message: String,
    },
    /// Not checked: no allowed_signers file was given.
    Unchecked,
}

impl SignatureStatus {
    fn lines(&self, claimed: &str) -> String {
        match self {
            SignatureStatus::Valid { principal, fingerprint } => {
                format!("  Signed by  {}\n  Signature  valid, key {fingerprint}\n", escape(principal))
            }
            SignatureStatus::Invalid { message } => {
                format!("  Signed by  {} (claimed)\n  Signature  NOT VALID: {}\n", escape(claimed), escape(message))
            }
            SignatureStatus::Unchecked => {
                format!(
                    "  Signed by  {} (claimed)\n  Signature  not checked (give --allowed-signers)\n",
                    escape(claimed)
                )
            }
        }
    }
}

/// How far `when` is from `now`, in words ("in 6 days", "3 hours ago").
pub fn relative(when: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let delta = when - now;
    let (amount, future) = if delta.num_seconds() >= 0 { (delta, true) } else { (-delta, false) };
    let text = if amount.num_days() >= 2 {
        format!("{} days", amount.num_days())
    } else if amount.num_hours() >= 2 {
        format!("{} hours", amount.num_hours())
    } else {
        match amount.num_minutes().max(1) {
            1 => "1 minute".to_string(),
            n => format!("{n} minutes"),
        }
    };
    if future {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

fn human_time(when: &DateTime<Utc>) -> String {
    when.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// The name a review gives a group: Graph's live name when it was read, with the plan's label beside it when the
/// two differ (the plan may have been made for another group); the plan's label, else the id, when Graph was not
/// asked. Escaped for the terminal.
pub fn group_name(planned: Option<&str>, live: Option<&str>, id: &ObjectId) -> String {
    match (live, planned) {
        (Some(live), Some(planned)) if live != planned => {
            format!("{} (the plan says \"{}\")", escape(live), escape(planned))
        }
        (Some(live), _) => escape(live).into_owned(),
        (None, Some(planned)) => escape(planned).into_owned(),
        (None, None) => id.to_string(),
    }
}

/// [`group_name`] followed by the group's id in brackets (just the id when nobody named the group): the heading of
/// a group's section in a review.
pub fn group_heading(planned: Option<&str>, live: Option<&str>, id: &ObjectId) -> String {
    if planned.is_none() && live.is_none() {
        return id.to_string();
    }
    format!("{} ({id})", group_name(planned, live, id))
}

/// Graph's live name of the plan's group number `index`, when the caller read it.
fn live_name<'a>(live: &[Option<&'a str>], index: usize) -> Option<&'a str> {
    live.get(index).copied().flatten()
}

/// The per-group counts as one table.
pub fn summary_table(plan: &Plan, width: Option<u16>) -> Table {
    summary_table_live(plan, &[], width)
}

/// [`summary_table`] naming each group as Graph does now (`live`, by the plan's group order; see [`group_name`]).
pub fn summary_table_live(plan: &Plan, live: &[Option<&str>], width: Option<u16>) -> Table {
    let columns = [
        Column::shorten("Group", 1),
        Column::number("Members"),
        Column::number("Adds"),
        Column::number("Removes"),
        Column::number("Not acted on"),
    ];
    let rows: Vec<Vec<String>> = plan
        .groups
        .iter()
        .enumerate()
        .map(|(index, group)| {
            vec![
                group_name(group.display_name.as_deref(), live_name(live, index), &group.group_id),
                group.precondition.member_count.to_string(),
                group.counts.add.to_string(),
                group.counts.remove.to_string(),
                group.counts.not_acted_on_total().to_string(),
            ]
        })
        .collect();
    table(&columns, &rows, width)
}

fn notes(change: &Change) -> String {
    let mut notes: Vec<String> = change.flags.iter().map(|f| f.as_str().to_uppercase()).collect();
    if change.action == Action::Add {
        // `…; matched by mail`, perhaps followed by `; note: another user also has this address: …`.
        let (reason, note) = match change.reason.split_once(crate::reconcile::NOTE) {
            Some((reason, note)) => (reason, Some(note)),
            None => (change.reason.as_str(), None),
        };
        if let Some((_, how)) = reason.rsplit_once("matched by ") {
            if how != "userPrincipalName" {
                notes.push(format!("via {how}"));
            }
        }
        if let Some(note) = note {
            notes.push(format!("NOTE: {note}"));
        }
    }
    escape(&notes.join(", ")).into_owned()
}

fn changes_table(changes: &[&Change], width: Option<u16>) -> Table {
    // The name is the least needed (the UPN says who), the notes (guest, disabled, matched how) the most.
    // The short id beside the UPN shows which object the change acts on, whatever the label says.
    let columns = [
        Column::keep("User (UPN)"),
        Column::keep("Id"),
        Column::shorten("Name", 1),
        Column::number("Line"),
        Column::shorten("Notes", 2),
    ];
    let rows: Vec<Vec<String>> = changes
        .iter()
        .map(|change| {
            vec![
                escape(&change.upn).into_owned(),
                change.user_id.short(),
                escape(change.display_name.as_deref().unwrap_or_default()).into_owned(),
                change.source_line.map(|l| l.to_string()).unwrap_or_default(),
                notes(change),
            ]
        })
        .collect();
    let full = table(&columns, &rows, width);
    // Long UPNs (guests' #EXT# names) and the ids are never shortened: when even the shortest names leave the
    // table too wide for the terminal, the name column goes (the UPN says who).
    match width {
        Some(limit) if too_wide(&full, limit) => {
            let (columns, rows) = without_column(&columns, &rows, 2);
            table(&columns, &rows, width)
        }
        _ => full,
    }
}

/// True when a line of `table` is wider than `limit` display columns.
fn too_wide(table: &Table, limit: u16) -> bool {
    table.to_string().lines().any(|line| unicode_width::UnicodeWidthStr::width(line) > usize::from(limit))
}

/// `columns` and `rows` without the column at `index`.
fn without_column<'c>(
    columns: &[Column<'c>],
    rows: &[Vec<String>],
    index: usize,
) -> (Vec<Column<'c>>, Vec<Vec<String>>) {
    let keep = |i: &usize| *i != index;
    let columns = columns.iter().enumerate().filter(|(i, _)| keep(i)).map(|(_, c)| *c).collect();
    let rows = rows
        .iter()
        .map(|row| row.iter().enumerate().filter(|(i, _)| keep(i)).map(|(_, cell)| cell.clone()).collect())
        .collect();
    (columns, rows)
}

fn skipped_table(entries: &[&Skipped], width: Option<u16>) -> Table {
    let columns =
        [Column::shorten("Why", 2), Column::keep("Entry"), Column::number("Line"), Column::shorten("Detail", 1)];
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|entry| {
            let what = entry
                .email
                .clone()
                .or_else(|| entry.upn.clone())
                .or_else(|| entry.display_name.clone())
                .or_else(|| entry.object_id.as_ref().map(|id| id.to_string()))
                .unwrap_or_default();
            vec![
                entry.kind.label().to_string(),
                escape(&what).into_owned(),
                entry.source_line.map(|l| l.to_string()).unwrap_or_default(),
                escape(&entry.detail).into_owned(),
            ]
        })
        .collect();
    table(&columns, &rows, width)
}

fn group_section(out: &mut String, group: &GroupPlan, live: Option<&str>, width: Option<u16>) {
    out.push_str(&format!("\nGroup {}\n", group_heading(group.display_name.as_deref(), live, &group.group_id)));
    out.push_str(&format!(
        "  {} user members when planned (membership hash {}…)\n",
        group.precondition.member_count,
        &group.precondition.members_sha256[..16.min(group.precondition.members_sha256.len())]
    ));
    if group.options.add_only {
        out.push_str("  adds only (--add-only): no member is removed\n");
    }
    if group.options.remove_only {
        out.push_str("  removes only (--remove-only): no member is added\n");
    }
    for input in &group.inputs {
        out.push_str(&format!(
            "  {:<9} {}\n    sha256 {}\n",
            input.role.as_str(),
            escape(&input.description),
            escape(&input.sha256)
        ));
    }
    for (action, title) in [(Action::Add, "Adds"), (Action::Remove, "Removes")] {
        let changes: Vec<&Change> = group.changes_of(action).collect();
        out.push_str(&format!("\n{title}: {}\n", changes.len()));
        if !changes.is_empty() {
            out.push_str(&changes_table(&changes, width).to_string());
            out.push('\n');
        }
    }
    let skipped: Vec<&Skipped> = group.not_acted_on.iter().collect();
    let by_kind = skipped_by_kind(|kind| group.counts.not_acted_on.get(&kind).copied().unwrap_or(0));
    out.push_str(&format!("\nNot acted on: {}\n", skipped.len()));
    let mut line = String::new();
    for part in by_kind {
        if !line.is_empty() && line.len() + part.len() + 2 > 76 {
            out.push_str(&format!("  {line}\n"));
            line.clear();
        }
        if !line.is_empty() {
            line.push_str(", ");
        }
        line.push_str(&part);
    }
    if !line.is_empty() {
        out.push_str(&format!("  {line}\n"));
    }
    if !skipped.is_empty() {
        out.push_str(&skipped_table(&skipped, width).to_string());
        out.push('\n');
    }
}

/// The entries not acted on, counted by kind in the words the review tables use (`4 not a user`, `2 on the keep
/// list`), the kinds without entries left out. `plan` and `show` both say it this way.
pub fn skipped_by_kind(count: impl Fn(SkipKind) -> u64) -> Vec<String> {
    SkipKind::ALL
        .iter()
        .filter_map(|kind| {
            let n = count(*kind);
            (n > 0).then(|| format!("{n} {}", kind.label()))
        })
        .collect()
}

/// The full review: summary lines, the counts table, then each group's tables.
pub fn render_review(
    plan: &Plan,
    plan_sha256: &str,
    signature: &SignatureStatus,
    now: DateTime<Utc>,
    width: Option<u16>,
) -> String {
    render_review_live(plan, plan_sha256, signature, now, width, &[])
}

/// [`render_review`] naming each group as Graph does now: `live` holds Graph's displayName of each of the plan's
/// groups, in the plan's order (`apply` reads them); the plan's label is shown beside a name that differs.
pub fn render_review_live(
    plan: &Plan,
    plan_sha256: &str,
    signature: &SignatureStatus,
    now: DateTime<Utc>,
    width: Option<u16>,
    live: &[Option<&str>],
) -> String {
    let mut out = String::new();
    let (adds, removes) = plan.totals();
    out.push_str(&format!("Plan {}\n", plan.plan_id));
    out.push_str(&signature.lines(&plan.signer));
    out.push_str(&entra_actor_lines(plan));
    out.push_str(&format!("  Created    {} by {}\n", human_time(&plan.created_at), escape(&plan.tool_version)));
    let expiry = if plan.is_expired(now) {
        format!("EXPIRED {}, {} (apply refuses it)", relative(plan.expires_at, now), human_time(&plan.expires_at))
    } else {
        format!("{} ({})", human_time(&plan.expires_at), relative(plan.expires_at, now))
    };
    out.push_str(&format!("  Expires    {expiry}\n"));
    out.push_str(&format!(
        "  Tenant     {}\n",
        escape(plan.tenant_id.as_deref().unwrap_or("(not recorded: planned from files)"))
    ));
    out.push_str(&format!("  SHA-256    {plan_sha256}\n"));
    out.push_str(&format!("  Changes    {adds} adds, {removes} removes in {} group(s)\n\n", plan.groups.len()));
    out.push_str(&summary_table_live(plan, live, width).to_string());
    out.push('\n');
    for (index, group) in plan.groups.iter().enumerate() {
        group_section(&mut out, group, live_name(live, index), width);
    }
    out
}

/// Who read Graph for the plan, for the line beside the SSH signer (escaped for the terminal).
pub fn entra_actor_line(plan: &Plan) -> String {
    match &plan.entra_actor {
        Some(actor) => format!("{} read Graph for this plan", crate::terminal::escape(&actor.label())),
        None if plan.tenant_id.is_none() => "(not recorded: planned from files)".into(),
        None => "(not recorded)".into(),
    }
}

/// The review's lines under the SSH signer: who read Graph for the plan (short enough for 80 columns).
fn entra_actor_lines(plan: &Plan) -> String {
    match &plan.entra_actor {
        Some(actor) => format!(
            "  Entra      {}\n  Entra id   {}\n",
            crate::terminal::escape(&actor.short_label()),
            crate::terminal::escape(&actor.id)
        ),
        None => format!("  Entra      {}\n", entra_actor_line(plan)),
    }
}

/// The stable shape of `show --json`.
#[derive(Debug, Serialize)]
pub struct ReviewJson<'a> {
    /// The plan id.
    pub plan_id: String,
    /// The format version.
    pub format_version: &'a str,
    /// SHA-256 of the plan file.
    pub plan_sha256: &'a str,
    /// When the plan was made.
    pub created_at: String,
    /// When it expires.
    pub expires_at: String,
    /// Whether it has expired.
    pub expired: bool,
    /// The signer the plan names.
    pub signer: &'a str,
    /// The signature check.
    pub signature: &'a SignatureStatus,
    /// Who read Graph for the plan, when recorded.
    pub entra_actor: Option<&'a crate::identity::EntraActor>,
    /// The tenant, when recorded.
    pub tenant_id: Option<&'a str>,
    /// Total adds.
    pub adds: u64,
    /// Total removes.
    pub removes: u64,
    /// The groups.
    pub groups: Vec<GroupJson<'a>>,
}

/// One group in [`ReviewJson`].
#[derive(Debug, Serialize)]
pub struct GroupJson<'a> {
    /// The group id.
    pub group_id: &'a str,
    /// The display name.
    pub display_name: Option<&'a str>,
    /// User members when planned.
    pub member_count: u64,
    /// The membership hash.
    pub members_sha256: &'a str,
    /// Counts.
    pub counts: &'a crate::plan::Counts,
    /// Inputs.
    pub inputs: &'a [crate::plan::InputRecord],
    /// Changes.
    pub changes: &'a [Change],
    /// Entries not acted on.
    pub not_acted_on: &'a [Skipped],
}

impl<'a> ReviewJson<'a> {
    /// Builds the JSON review.
    pub fn new(plan: &'a Plan, plan_sha256: &'a str, signature: &'a SignatureStatus, now: DateTime<Utc>) -> Self {
        let (adds, removes) = plan.totals();
        ReviewJson {
            plan_id: plan.plan_id.to_string(),
            format_version: &plan.format_version,
            plan_sha256,
            created_at: timestamp::format(&plan.created_at),
            expires_at: timestamp::format(&plan.expires_at),
            expired: plan.is_expired(now),
            signer: &plan.signer,
            signature,
            entra_actor: plan.entra_actor.as_ref(),
            tenant_id: plan.tenant_id.as_deref(),
            adds,
            removes,
            groups: plan
                .groups
                .iter()
                .map(|g| GroupJson {
                    group_id: g.group_id.as_str(),
                    display_name: g.display_name.as_deref(),
                    member_count: g.precondition.member_count,
                    members_sha256: &g.precondition.members_sha256,
                    counts: &g.counts,
                    inputs: &g.inputs,
                    changes: &g.changes,
                    not_acted_on: &g.not_acted_on,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::sample_plan;

    #[test]
    fn relative_times_use_the_singular_for_one() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        assert_eq!(relative(now + chrono::Duration::seconds(90), now), "in 1 minute");
        assert_eq!(relative(now - chrono::Duration::seconds(20), now), "1 minute ago");
        assert_eq!(relative(now + chrono::Duration::minutes(5), now), "in 5 minutes");
        assert_eq!(relative(now - chrono::Duration::hours(3), now), "3 hours ago");
    }

    #[test]
    fn review_fits_80_columns_and_names_everything() {
        let plan = sample_plan();
        let now = plan.created_at + chrono::Duration::hours(1);
        let text = render_review(&plan, "00ff", &SignatureStatus::Unchecked, now, Some(80));
        for line in text.lines() {
            assert!(line.chars().count() <= 80, "too wide: {line}");
        }
        assert!(text.contains("All Staff"));
        assert!(text.contains("user4@contoso.example"));
        assert!(text.contains("GUEST"));
        assert!(text.contains("DISABLED"));
        assert!(text.contains("no matching user"));
        assert!(text.contains("not checked"));
        assert!(!text.contains("EXPIRED"));
    }

    #[test]
    fn each_upn_has_its_short_id_and_a_live_group_name_shows_the_plans_beside_it() {
        let plan = sample_plan();
        let now = plan.created_at + chrono::Duration::hours(1);
        let text = render_review(&plan, "00", &SignatureStatus::Unchecked, now, None);
        for change in &plan.groups[0].changes {
            let row = text.lines().find(|l| l.contains(&format!(" {} ", change.upn))).unwrap_or_default();
            assert!(row.contains(&change.user_id.short()), "no short id beside {}: {text}", change.upn);
        }
        let planned = plan.groups[0].display_name.clone().unwrap();
        let live = render_review_live(&plan, "00", &SignatureStatus::Unchecked, now, None, &[Some("Managers")]);
        assert!(live.contains(&format!("Managers (the plan says \"{planned}\")")), "{live}");
        let same = render_review_live(&plan, "00", &SignatureStatus::Unchecked, now, None, &[Some(&planned)]);
        assert!(!same.contains("the plan says"), "{same}");
    }

    #[test]
    fn long_guest_upns_and_ids_fit_80_columns_without_the_names() {
        let mut plan = sample_plan();
        plan.groups[0].changes[0].upn = "priya.nair_adatum.example#EXT#@contoso.example".into();
        let now = plan.created_at + chrono::Duration::hours(1);
        let text = render_review(&plan, "00", &SignatureStatus::Unchecked, now, Some(80));
        for line in text.lines() {
            assert!(line.chars().count() <= 80, "too wide: {line}");
        }
        assert!(text.contains("priya.nair_adatum.example#EXT#@contoso.example"));
        assert!(text.contains(&plan.groups[0].changes[0].user_id.short()));
        // Wide enough: the names stay.
        let wide = render_review(&plan, "00", &SignatureStatus::Unchecked, now, Some(120));
        assert!(wide.contains("│ Name") || wide.contains("┆ Name"), "{wide}");
    }

    #[test]
    fn expiry_is_reported_not_hidden() {
        let plan = sample_plan();
        let later = plan.expires_at + chrono::Duration::days(3);
        let text = render_review(&plan, "00", &SignatureStatus::Unchecked, later, Some(80));
        assert!(text.contains("EXPIRED 3 days ago"));
    }
}
