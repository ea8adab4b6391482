//! The apply receipt: `<plan>.receipt.json`, what became of every change of a plan.
//!
//! It names the plan (id and SHA-256 of its file), the applier, when the apply started and ended, each change's
//! outcome (with Graph's code, message and request-id for failures), the counts, and the journal's head hash and
//! `seq` after the `apply-finished` line, which anchors the journal's tail. With `--key` it is signed (SSHSIG,
//! namespace `writeback-receipt`) into `<plan>.receipt.json.sig`.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Applier, ChangeResult, FinishStatus, GraphFailure, Outcome, OutcomeCounts};
use crate::identity::ObjectId;
use crate::plan::{timestamp, Action, Plan};

/// The `format` marker of a receipt.
pub const RECEIPT_FORMAT: &str = "writeback-receipt";
/// The receipt format version this build writes.
/// 1.1 added `renames` and the `deleted-since-planning` outcome (both optional: 1.0 receipts still read).
/// 1.2 added `entra_actor` (optional: older receipts still read).
pub const RECEIPT_VERSION: &str = "1.2";
/// The SSHSIG namespace of receipt signatures.
pub const RECEIPT_NAMESPACE: &str = "writeback-receipt";

/// A receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// Always [`RECEIPT_FORMAT`].
    pub format: String,
    /// `MAJOR.MINOR`.
    pub format_version: String,
    /// How the outcomes were established: by `apply` (the default, not written), or by `check` after a manual
    /// apply.
    #[serde(default, skip_serializing_if = "ReceiptMode::is_apply")]
    pub mode: ReceiptMode,
    /// The plan's id.
    pub plan_id: Uuid,
    /// SHA-256 (hex) of the plan file's exact bytes.
    pub plan_sha256: String,
    /// The plan file's name, as given.
    pub plan_file: String,
    /// The tenant the changes were made in.
    pub tenant_id: Option<String>,
    /// Who applied the plan.
    pub applier: Applier,
    /// Who wrote to Entra ID: the person or application behind the Graph token of the apply. Since 1.1; absent
    /// when the token did not say (or for a manual-verified receipt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entra_actor: Option<crate::identity::EntraActor>,
    /// When the first run of this plan started.
    #[serde(with = "timestamp")]
    pub started_at: DateTime<Utc>,
    /// When the last change got its outcome.
    #[serde(with = "timestamp")]
    pub finished_at: DateTime<Utc>,
    /// How many runs it took (more than 1 after an interruption).
    pub runs: u64,
    /// Complete, or partial when some changes failed.
    pub status: FinishStatus,
    /// The outcomes, all groups together.
    pub counts: OutcomeCounts,
    /// Per group: every change and its outcome, in the plan's order.
    pub groups: Vec<GroupReceipt>,
    /// The journal's head after `apply-finished`. Empty (and not written) for a
    /// [`ReceiptMode::ManualVerified`] receipt, which has no journal.
    #[serde(default, skip_serializing_if = "JournalAnchor::is_empty")]
    pub journal: JournalAnchor,
    /// Users whose UPN in Graph differed from the plan's, accepted with `--accept-renames` (old → new).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub renames: Vec<crate::apply::gates::Rename>,
}

/// How a receipt's outcomes were established.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReceiptMode {
    /// `writeback apply` made the changes and journaled every outcome.
    #[default]
    Apply,
    /// Someone applied the plan by hand (portal, PowerShell); `writeback check` then read the groups and found
    /// every change in effect. `started_at` and `finished_at` are the time of that check, `runs` is 0, and
    /// there is no journal.
    ManualVerified,
}

impl ReceiptMode {
    /// True for [`ReceiptMode::Apply`].
    pub fn is_apply(&self) -> bool {
        *self == ReceiptMode::Apply
    }

    /// `apply` or `manual-verified`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptMode::Apply => "apply",
            ReceiptMode::ManualVerified => "manual-verified",
        }
    }
}

/// The journal position a receipt anchors.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalAnchor {
    /// The journal file, as given.
    pub path: String,
    /// `sha256:<hex>` of the journal's last line (its `apply-finished`).
    pub head: String,
    /// That line's `seq`.
    pub seq: u64,
}

impl JournalAnchor {
    /// True for the empty anchor of a receipt without a journal.
    pub fn is_empty(&self) -> bool {
        self.path.is_empty() && self.head.is_empty() && self.seq == 0
    }
}

/// One group's part of a receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupReceipt {
    /// The group.
    pub group_id: ObjectId,
    /// Its display name, as the plan had it.
    pub display_name: Option<String>,
    /// This group's outcomes.
    pub counts: OutcomeCounts,
    /// Every change.
    pub changes: Vec<ChangeReceipt>,
}

/// One change and its outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeReceipt {
    /// Add or remove.
    pub action: Action,
    /// The user.
    pub user_id: ObjectId,
    /// The user's UPN, as the plan had it.
    pub upn: String,
    /// What happened.
    pub outcome: Outcome,
    /// A short explanation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Graph's error (code, message, request-id) for failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<GraphFailure>,
}

/// What a receipt is made from.
#[derive(Debug, Clone)]
pub struct ReceiptInput<'a> {
    /// The plan.
    pub plan: &'a Plan,
    /// SHA-256 of its file.
    pub plan_sha256: &'a str,
    /// Its file name.
    pub plan_file: String,
    /// The tenant.
    pub tenant_id: Option<String>,
    /// The applier.
    pub applier: Applier,
    /// The Entra actor of the apply.
    pub entra_actor: Option<crate::identity::EntraActor>,
    /// When the first run started.
    pub started_at: DateTime<Utc>,
    /// When the last outcome was recorded.
    pub finished_at: DateTime<Utc>,
    /// How many runs.
    pub runs: u64,
    /// The outcome of each change, by (group, user).
    pub outcomes: &'a BTreeMap<(ObjectId, ObjectId), ChangeResult>,
    /// The journal anchor.
    pub journal: JournalAnchor,
}

/// A plan change with no outcome, or an outcome for no plan change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the journal does not account for every change of the plan exactly once: {0}")]
pub struct Unaccounted(pub String);

/// The counts and status for a set of outcomes.
pub fn status_of(counts: &OutcomeCounts) -> FinishStatus {
    if counts.failed > 0 {
        FinishStatus::Partial
    } else {
        FinishStatus::Complete
    }
}

impl Receipt {
    /// Builds the receipt. Every change of the plan must have exactly one outcome, and every outcome must belong
    /// to a change of the plan, with the same action.
    pub fn build(input: ReceiptInput<'_>) -> Result<Receipt, Unaccounted> {
        let mut used = 0usize;
        let mut total = OutcomeCounts::default();
        let mut groups = Vec::with_capacity(input.plan.groups.len());
        for group in &input.plan.groups {
            let mut counts = OutcomeCounts::default();
            let mut changes = Vec::with_capacity(group.changes.len());
            for change in &group.changes {
                let key = (group.group_id.clone(), change.user_id.clone());
                let Some(result) = input.outcomes.get(&key) else {
                    return Err(Unaccounted(format!(
                        "no outcome for the {} of user {} in group {}",
                        change.action.as_str(),
                        change.user_id,
                        group.group_id
                    )));
                };
                if result.action != change.action {
                    return Err(Unaccounted(format!(
                        "user {} in group {}: the plan says {} but the journal says {}",
                        change.user_id,
                        group.group_id,
                        change.action.as_str(),
                        result.action.as_str()
                    )));
                }
                used += 1;
                counts.add(result.outcome);
                total.add(result.outcome);
                changes.push(ChangeReceipt {
                    action: change.action,
                    user_id: change.user_id.clone(),
                    upn: change.upn.clone(),
                    outcome: result.outcome,
                    detail: result.detail.clone(),
                    error: result.error.clone(),
                });
            }
            groups.push(GroupReceipt {
                group_id: group.group_id.clone(),
                display_name: group.display_name.clone(),
                counts,
                changes,
            });
        }
        if used != input.outcomes.len() {
            return Err(Unaccounted(format!(
                "the journal holds {} outcomes for this plan, but the plan has {used} changes",
                input.outcomes.len()
            )));
        }
        Ok(Receipt {
            format: RECEIPT_FORMAT.into(),
            format_version: RECEIPT_VERSION.into(),
            mode: ReceiptMode::Apply,
            plan_id: input.plan.plan_id,
            plan_sha256: input.plan_sha256.to_string(),
            plan_file: input.plan_file,
            tenant_id: input.tenant_id,
            applier: input.applier,
            entra_actor: input.entra_actor,
            started_at: input.started_at,
            finished_at: input.finished_at,
            runs: input.runs,
            status: status_of(&total),
            counts: total,
            groups,
            journal: input.journal,
            renames: Vec::new(),
        })
    }

    /// The failed changes, with their group.
    pub fn failures(&self) -> impl Iterator<Item = (&GroupReceipt, &ChangeReceipt)> {
        self.groups.iter().flat_map(|g| g.changes.iter().filter(|c| c.outcome == Outcome::Failed).map(move |c| (g, c)))
    }

    /// The receipt as pretty JSON with a final line feed: the bytes written and signed.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }

    /// Reads a receipt.
    pub fn decode(bytes: &[u8]) -> Result<Receipt, String> {
        let receipt: Receipt = serde_json::from_slice(bytes).map_err(|e| crate::plan::json::error_at(&e))?;
        if receipt.format != RECEIPT_FORMAT {
            return Err(format!("not a writeback receipt (format '{}')", receipt.format));
        }
        Ok(receipt)
    }

    /// True when this receipt is the receipt of the plan whose file has SHA-256 `plan_sha256`: a receipt belongs
    /// to the plan whose SHA-256 it records, and to no other.
    pub fn is_for(&self, plan_sha256: &str) -> bool {
        self.plan_sha256.eq_ignore_ascii_case(plan_sha256)
    }
}

/// Reads the receipt at `path` (a plan's receipt path) when there is one, and refuses one that belongs to
/// another plan ([`crate::Error::ForeignReceipt`], exit 3): it must never be taken for this plan's, for "applied
/// already" or for the audit trail. A file there that is not a receipt is refused the same way.
pub fn read_own(path: &Path, plan_id: Uuid, plan_sha256: &str) -> crate::Result<Option<Receipt>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(crate::Error::read(path, e)),
    };
    let foreign = |message: String| crate::Error::ForeignReceipt { path: path.to_path_buf(), message };
    let receipt = Receipt::decode(&bytes).map_err(|e| {
        foreign(format!(
            "this is where plan {plan_id}'s receipt goes, but the file is not a writeback receipt ({e}); move it \
             away, then run the command again"
        ))
    })?;
    if !receipt.is_for(plan_sha256) {
        return Err(foreign(format!(
            "this is the receipt of another plan: it records plan {} (SHA-256 {}), but this plan is {plan_id} \
             (SHA-256 {plan_sha256}). It says nothing about this plan. Move it, and its .sig, beside plan {} (the \
             plan file was probably replaced by a newer one), then run the command again",
            receipt.plan_id, receipt.plan_sha256, receipt.plan_id
        )));
    }
    Ok(Some(receipt))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Change, Counts, GroupPlan, Precondition};

    use crate::fixtures::id;

    fn plan() -> Plan {
        let changes: Vec<Change> = [(Action::Add, 1), (Action::Remove, 2)]
            .into_iter()
            .map(|(action, n)| Change {
                action,
                user_id: id(n),
                upn: format!("u{n}@contoso.com"),
                mail: None,
                display_name: None,
                source_line: None,
                reason: "r".into(),
                flags: vec![],
            })
            .collect();
        Plan {
            format: crate::plan::FORMAT_NAME.into(),
            format_version: "1.0".into(),
            plan_id: Uuid::from_u128(1),
            created_at: DateTime::from_timestamp(0, 0).unwrap(),
            expires_at: DateTime::from_timestamp(100, 0).unwrap(),
            signer: "s".into(),
            tool_version: "t".into(),
            tenant_id: Some("tenant".into()),
            entra_actor: None,
            groups: vec![GroupPlan {
                group_id: id(100),
                display_name: Some("Staff".into()),
                options: Default::default(),
                inputs: vec![],
                precondition: Precondition::from_members(&[id(2)]),
                counts: Counts::tally(&changes, &[]),
                changes,
                not_acted_on: vec![],
            }],
        }
    }

    fn outcome(n: u32, action: Action, outcome: Outcome) -> ((ObjectId, ObjectId), ChangeResult) {
        (
            (id(100), id(n)),
            ChangeResult { group_id: id(100), user_id: id(n), action, outcome, detail: None, error: None },
        )
    }

    fn input<'a>(plan: &'a Plan, outcomes: &'a BTreeMap<(ObjectId, ObjectId), ChangeResult>) -> ReceiptInput<'a> {
        ReceiptInput {
            plan,
            plan_sha256: "ab",
            plan_file: "plan.json".into(),
            tenant_id: Some("tenant".into()),
            entra_actor: None,
            applier: Applier {
                os_user: Some("admin".into()),
                key_principal: None,
                key_fingerprint: None,
                tool_version: "t".into(),
            },
            started_at: DateTime::from_timestamp(10, 0).unwrap(),
            finished_at: DateTime::from_timestamp(20, 0).unwrap(),
            runs: 1,
            outcomes,
            journal: JournalAnchor { path: "j".into(), head: "sha256:00".into(), seq: 4 },
        }
    }

    #[test]
    fn receipt_accounts_for_every_change() {
        let plan = plan();
        let outcomes: BTreeMap<_, _> =
            [outcome(1, Action::Add, Outcome::Applied), outcome(2, Action::Remove, Outcome::Failed)]
                .into_iter()
                .collect();
        let r = Receipt::build(input(&plan, &outcomes)).unwrap();
        assert_eq!(r.status, FinishStatus::Partial);
        assert_eq!(r.counts.applied, 1);
        assert_eq!(r.counts.failed, 1);
        assert_eq!(r.failures().count(), 1);
        let bytes = r.encode();
        assert_eq!(Receipt::decode(&bytes).unwrap(), r);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("\"outcome\": \"failed\""), "{text}");
        assert!(!text.contains("\"mode\""), "an apply receipt does not name its mode: {text}");
    }

    #[test]
    fn a_manual_verified_receipt_has_a_mode_and_no_journal() {
        let plan = plan();
        let outcomes: BTreeMap<_, _> =
            [outcome(1, Action::Add, Outcome::Applied), outcome(2, Action::Remove, Outcome::Applied)]
                .into_iter()
                .collect();
        let mut r =
            Receipt::build(ReceiptInput { journal: JournalAnchor::default(), ..input(&plan, &outcomes) }).unwrap();
        r.mode = ReceiptMode::ManualVerified;
        let text = String::from_utf8(r.encode()).unwrap();
        assert!(text.contains("\"mode\": \"manual-verified\""), "{text}");
        assert!(!text.contains("\"journal\""), "{text}");
        assert_eq!(Receipt::decode(text.as_bytes()).unwrap(), r);
    }

    #[test]
    fn a_missing_or_extra_outcome_is_refused() {
        let plan = plan();
        let outcomes: BTreeMap<_, _> = [outcome(1, Action::Add, Outcome::Applied)].into_iter().collect();
        assert!(Receipt::build(input(&plan, &outcomes)).is_err());
        let outcomes: BTreeMap<_, _> = [
            outcome(1, Action::Add, Outcome::Applied),
            outcome(2, Action::Remove, Outcome::AlreadyAbsent),
            outcome(3, Action::Add, Outcome::Applied),
        ]
        .into_iter()
        .collect();
        assert!(Receipt::build(input(&plan, &outcomes)).is_err());
        let outcomes: BTreeMap<_, _> =
            [outcome(1, Action::Add, Outcome::Applied), outcome(2, Action::Add, Outcome::Applied)]
                .into_iter()
                .collect();
        assert!(Receipt::build(input(&plan, &outcomes)).is_err());
    }
}
