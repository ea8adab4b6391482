//! `check`'s comparison: is each change of a plan in effect in the group as it is now, and what changed that the
//! plan did not ask for. Pure: the caller reads the members from Graph.
//!
//! A change is in effect when the group now agrees with it: an add's user is a member, a remove's user is not.
//! Unrequested changes are measured against the plan's precondition (the user members at planning time): a user
//! who is a member now but was not then, and whose add the plan does not hold, joined outside the plan; a user
//! who was a member then but is not now, and whose remove the plan does not hold, left outside the plan. Only
//! user members count, as in the precondition.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::apply::receipt::{JournalAnchor, Receipt, ReceiptInput, ReceiptMode, Unaccounted};
use crate::apply::Applier;
use crate::apply::{ChangeResult, Outcome};
use crate::directory::{GroupMember, MemberKind};
use crate::identity::ObjectId;
use crate::plan::{timestamp, Action, GroupPlan, Plan};

/// One planned change and whether it is in effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChangeStatus {
    /// Add or remove.
    pub action: Action,
    /// The user.
    pub user_id: ObjectId,
    /// The user's UPN, as the plan has it.
    pub upn: String,
    /// The user's display name, as the plan has it.
    pub display_name: Option<String>,
    /// True when the group agrees with the change now.
    pub in_effect: bool,
}

/// A membership change since planning that the plan did not ask for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unrequested {
    /// `add` (the user joined) or `remove` (the user left).
    pub action: Action,
    /// The user.
    pub user_id: ObjectId,
    /// The user's UPN, when known (from Graph for a user who joined, from the plan for one who left).
    pub upn: Option<String>,
    /// The display name, when known.
    pub display_name: Option<String>,
}

/// The result for one group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupCheck {
    /// The group.
    pub group_id: ObjectId,
    /// Its display name, as the plan has it.
    pub display_name: Option<String>,
    /// Its display name in Graph now, when `check` read it.
    pub live_name: Option<String>,
    /// User members at planning time (the precondition).
    pub members_then: u64,
    /// User members now.
    pub members_now: u64,
    /// Every planned change, in the plan's order.
    pub changes: Vec<ChangeStatus>,
    /// Changes since planning that the plan did not ask for: joins first, then leaves, each by user id.
    pub unrequested: Vec<Unrequested>,
}

impl GroupCheck {
    /// How many planned changes are not in effect.
    pub fn not_in_effect(&self) -> usize {
        self.changes.iter().filter(|c| !c.in_effect).count()
    }

    /// The label people know the group by.
    pub fn label(&self) -> String {
        match &self.display_name {
            Some(name) => format!("{name} ({})", self.group_id),
            None => self.group_id.to_string(),
        }
    }
}

/// Compares one group's plan with its members now (any kinds; only users count).
pub fn compare(group: &GroupPlan, current: &[GroupMember]) -> GroupCheck {
    let now: BTreeMap<&ObjectId, &GroupMember> =
        current.iter().filter(|m| m.kind == MemberKind::User).map(|m| (&m.id, m)).collect();
    let then: BTreeSet<&ObjectId> = group.precondition.member_ids.iter().collect();
    let planned: BTreeMap<&ObjectId, Action> = group.changes.iter().map(|c| (&c.user_id, c.action)).collect();

    let changes = group
        .changes
        .iter()
        .map(|c| ChangeStatus {
            action: c.action,
            user_id: c.user_id.clone(),
            upn: c.upn.clone(),
            display_name: c.display_name.clone(),
            in_effect: match c.action {
                Action::Add => now.contains_key(&c.user_id),
                Action::Remove => !now.contains_key(&c.user_id),
            },
        })
        .collect();

    // Names for users who left: the plan may know them from its entries not acted on (kept users, …).
    let known: BTreeMap<&ObjectId, (Option<&String>, Option<&String>)> = group
        .not_acted_on
        .iter()
        .filter_map(|s| s.object_id.as_ref().map(|id| (id, (s.upn.as_ref(), s.display_name.as_ref()))))
        .collect();

    let mut unrequested = Vec::new();
    for (id, member) in &now {
        if !then.contains(id) && planned.get(id) != Some(&Action::Add) {
            unrequested.push(Unrequested {
                action: Action::Add,
                user_id: (*id).clone(),
                upn: member.upn.clone(),
                display_name: member.display_name.clone(),
            });
        }
    }
    for id in &then {
        if !now.contains_key(id) && planned.get(id) != Some(&Action::Remove) {
            let (upn, name) = known.get(id).copied().unwrap_or((None, None));
            unrequested.push(Unrequested {
                action: Action::Remove,
                user_id: (*id).clone(),
                upn: upn.cloned(),
                display_name: name.cloned(),
            });
        }
    }

    GroupCheck {
        group_id: group.group_id.clone(),
        display_name: group.display_name.clone(),
        live_name: None,
        members_then: group.precondition.member_count,
        members_now: now.len() as u64,
        changes,
        unrequested,
    }
}

/// The result for a whole plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// One entry per group, in the plan's order.
    pub groups: Vec<GroupCheck>,
}

impl CheckReport {
    /// Compares every group of `plan` with its members now. `members` holds each group's current members by
    /// group id; a group missing from it is compared with an empty membership.
    pub fn build(plan: &Plan, members: &BTreeMap<ObjectId, Vec<GroupMember>>) -> CheckReport {
        let groups = plan
            .groups
            .iter()
            .map(|g| compare(g, members.get(&g.group_id).map(Vec::as_slice).unwrap_or(&[])))
            .collect();
        CheckReport { groups }
    }

    /// True when every planned change is in effect.
    pub fn all_in_effect(&self) -> bool {
        self.not_in_effect() == 0
    }

    /// How many planned changes are not in effect, all groups together.
    pub fn not_in_effect(&self) -> usize {
        self.groups.iter().map(GroupCheck::not_in_effect).sum()
    }

    /// How many planned changes there are.
    pub fn changes(&self) -> usize {
        self.groups.iter().map(|g| g.changes.len()).sum()
    }

    /// How many unrequested changes there are.
    pub fn unrequested(&self) -> usize {
        self.groups.iter().map(|g| g.unrequested.len()).sum()
    }
}

/// What a manual-verified receipt is made from, besides the plan and the check.
#[derive(Debug, Clone)]
pub struct ManualReceiptInput<'a> {
    /// The plan.
    pub plan: &'a Plan,
    /// SHA-256 (hex) of the plan file.
    pub plan_sha256: &'a str,
    /// The plan file's name, as given.
    pub plan_file: String,
    /// The tenant the groups were read in.
    pub tenant_id: Option<String>,
    /// Who ran the check (and signs the receipt, when a key is given).
    pub applier: Applier,
    /// When the check read the groups.
    pub checked_at: DateTime<Utc>,
}

/// Builds a [`ReceiptMode::ManualVerified`] receipt: every change `applied` (in effect when checked), no
/// journal, `runs` 0, started and finished at the time of the check. Refused unless every change is in effect:
/// such a receipt certifies that the plan is in effect.
pub fn manual_receipt(input: ManualReceiptInput<'_>, report: &CheckReport) -> Result<Receipt, Unaccounted> {
    if !report.all_in_effect() {
        return Err(Unaccounted(format!(
            "{} of the plan's {} changes are not in effect",
            report.not_in_effect(),
            report.changes()
        )));
    }
    let detail = format!("in effect when writeback check read the group at {}", timestamp::format(&input.checked_at));
    let outcomes: BTreeMap<(ObjectId, ObjectId), ChangeResult> = report
        .groups
        .iter()
        .flat_map(|g| {
            g.changes.iter().map(|c| {
                (
                    (g.group_id.clone(), c.user_id.clone()),
                    ChangeResult {
                        group_id: g.group_id.clone(),
                        user_id: c.user_id.clone(),
                        action: c.action,
                        outcome: Outcome::Applied,
                        detail: Some(detail.clone()),
                        error: None,
                    },
                )
            })
        })
        .collect();
    let mut receipt = Receipt::build(ReceiptInput {
        plan: input.plan,
        plan_sha256: input.plan_sha256,
        plan_file: input.plan_file,
        tenant_id: input.tenant_id,
        applier: input.applier,
        entra_actor: None,
        started_at: input.checked_at,
        finished_at: input.checked_at,
        runs: 0,
        outcomes: &outcomes,
        journal: JournalAnchor::default(),
    })?;
    receipt.mode = ReceiptMode::ManualVerified;
    Ok(receipt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Counts, PlanOptions, Precondition, SkipKind, Skipped};

    use crate::fixtures::{change, id};

    fn user(n: u32) -> GroupMember {
        GroupMember {
            id: id(n),
            kind: MemberKind::User,
            upn: Some(format!("u{n}@contoso.example")),
            display_name: None,
            mail: None,
            source_line: None,
        }
    }

    /// Members then: 1, 2, 3 (3 kept). Plan: add 4, add 5, remove 2.
    fn group() -> GroupPlan {
        let changes = vec![change(Action::Add, 4), change(Action::Add, 5), change(Action::Remove, 2)];
        let not_acted_on = vec![Skipped {
            kind: SkipKind::Kept,
            email: None,
            object_id: Some(id(3)),
            upn: Some("kept@contoso.example".into()),
            display_name: Some("Kept".into()),
            source_line: None,
            detail: String::new(),
        }];
        GroupPlan {
            group_id: id(100),
            display_name: Some("Staff".into()),
            options: PlanOptions::default(),
            inputs: vec![],
            precondition: Precondition::from_members(&[id(1), id(2), id(3)]),
            counts: Counts::tally(&changes, &not_acted_on),
            changes,
            not_acted_on,
        }
    }

    #[test]
    fn everything_in_effect() {
        let g = group();
        let device = GroupMember { kind: MemberKind::Device, ..user(9) };
        let check = compare(&g, &[user(1), user(3), user(4), user(5), device]);
        assert!(check.changes.iter().all(|c| c.in_effect));
        assert!(check.unrequested.is_empty(), "{:?}", check.unrequested);
        assert_eq!((check.members_then, check.members_now), (3, 4));
    }

    #[test]
    fn a_missing_add_and_a_remaining_remove_are_not_in_effect() {
        let g = group();
        let check = compare(&g, &[user(1), user(2), user(3), user(4)]);
        let missing: Vec<(Action, ObjectId)> =
            check.changes.iter().filter(|c| !c.in_effect).map(|c| (c.action, c.user_id.clone())).collect();
        assert_eq!(missing, vec![(Action::Add, id(5)), (Action::Remove, id(2))]);
        assert_eq!(check.not_in_effect(), 2);
        assert!(check.unrequested.is_empty());
    }

    #[test]
    fn unrequested_joins_and_leaves_are_listed() {
        let g = group();
        // 6 joined outside the plan; 3 (kept, so never planned) left; 1 stayed.
        let check = compare(&g, &[user(1), user(4), user(5), user(6)]);
        assert_eq!(check.not_in_effect(), 0);
        assert_eq!(
            check.unrequested,
            vec![
                Unrequested {
                    action: Action::Add,
                    user_id: id(6),
                    upn: Some("u6@contoso.example".into()),
                    display_name: None
                },
                Unrequested {
                    action: Action::Remove,
                    user_id: id(3),
                    upn: Some("kept@contoso.example".into()),
                    display_name: Some("Kept".into())
                },
            ]
        );
    }

    #[test]
    fn non_user_members_never_count() {
        let g = group();
        let as_device = GroupMember { kind: MemberKind::Device, ..user(4) };
        let check = compare(&g, &[user(1), user(3), user(5), as_device]);
        assert_eq!(check.not_in_effect(), 1, "user 4 is only present as a device-kind object");
    }

    fn plan_of(g: GroupPlan) -> Plan {
        Plan {
            format: crate::plan::FORMAT_NAME.into(),
            format_version: crate::plan::FORMAT_VERSION.into(),
            plan_id: uuid::Uuid::from_u128(5),
            created_at: timestamp::parse("2026-01-01T00:00:00Z").unwrap(),
            expires_at: timestamp::parse("2026-01-08T00:00:00Z").unwrap(),
            signer: "planner@contoso.example".into(),
            tool_version: "t".into(),
            tenant_id: None,
            entra_actor: None,
            groups: vec![g],
        }
    }

    #[test]
    fn report_and_manual_receipt() {
        let plan = plan_of(group());
        let applier = Applier {
            os_user: Some("admin".into()),
            key_principal: None,
            key_fingerprint: None,
            tool_version: "t".into(),
        };
        let at = timestamp::parse("2026-01-02T00:00:00Z").unwrap();
        let input = || ManualReceiptInput {
            plan: &plan,
            plan_sha256: "ab",
            plan_file: "plan.json".into(),
            tenant_id: None,
            applier: applier.clone(),
            checked_at: at,
        };
        let missing = CheckReport::build(&plan, &BTreeMap::new());
        assert_eq!((missing.changes(), missing.not_in_effect()), (3, 2), "with no members the remove is in effect");
        assert!(manual_receipt(input(), &missing).is_err());

        let members: BTreeMap<_, _> = [(id(100), vec![user(1), user(3), user(4), user(5)])].into_iter().collect();
        let done = CheckReport::build(&plan, &members);
        assert!(done.all_in_effect());
        let receipt = manual_receipt(input(), &done).unwrap();
        assert_eq!(receipt.mode, ReceiptMode::ManualVerified);
        assert_eq!(receipt.counts.applied, 3);
        assert_eq!(receipt.runs, 0);
        assert!(receipt.journal.is_empty());
        assert_eq!(receipt.started_at, at);
    }
}
