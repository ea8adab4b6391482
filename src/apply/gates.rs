//! The gates `apply` passes before it sends any write, and the work list they leave.
//!
//! Gates run in this order; each refusal has its own exit code ([`crate::error::exit`]):
//!
//! | # | gate | exit |
//! |---|------|------|
//! | 1 | signature valid, signer allowed for `writeback-plan` | 10, 11 |
//! | 2 | format version known (and the file is a well-formed plan) | 14, 13 |
//! | 3 | not expired | 12 |
//! | 3b | enough approvals (`--require-approvals`; [`crate::approvals::require_for`]) | 15 |
//! | 3c | the ledger: not finished (wherever the file sits), not cancelled ([`check_ledger`]) | 22, 28 |
//! | 3d | a plan started with this ledger resumes only with its own journal ([`check_ledger_journal`]) | 22 |
//! | 3e | no other apply of the plan is running (the ledger's lock, [`crate::ledger::lock`]) | 29 |
//! | 4 | tenant matches the token's tenant | 20 |
//! | 5 | each group exists and is manageable | 21 |
//! | 6 | the plan id has not finished in the journal (replay) | 22 |
//! | 7 | drift since planning, only with `--strict` | 23 |
//! | 8 | removal thresholds | 24 |
//!
//! Gates 1–3 are the trust module's verification and 3b the approvals module's, all offline; this module holds 4–8, as pure functions over values the
//! caller read, plus [`DirectoryReads`], the reads they need.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::journal::PlanProgress;
use super::{ChangeResult, Outcome};
use crate::directory::graph::DeletedItem;
use crate::directory::{DirectoryUser, GroupMember, MemberKind};
use crate::error::{Error, Result};
use crate::identity::ObjectId;
use crate::ledger::cancel::Cancellation;
use crate::ledger::Record;
use crate::plan::{timestamp, Action, Change, GroupPlan, Plan};

/// The directory reads the gates need. Implemented for the Graph client, and by fakes in tests.
pub trait DirectoryReads: Send + Sync {
    /// The tenant id of the token writeback holds.
    fn tenant_id(&self) -> impl Future<Output = Result<String>> + Send;
    /// A group's state, or `None` when it does not exist.
    fn group(&self, id: &ObjectId) -> impl Future<Output = Result<Option<GroupState>>> + Send;
    /// The group's direct members, each with its kind (`@odata.type`), and its UPN and name when it is a user.
    fn members(&self, id: &ObjectId) -> impl Future<Output = Result<Vec<GroupMember>>> + Send;
    /// The users among `ids`; an id that is not a user the admin can see is absent from the answer.
    fn users_by_id(&self, ids: &[ObjectId]) -> impl Future<Output = Result<Vec<DirectoryUser>>> + Send;
    /// What each of `ids` is among the tenant's deleted items.
    fn deleted_items(&self, ids: &[ObjectId]) -> impl Future<Output = Result<Vec<(ObjectId, DeletedItem)>>> + Send;
}

/// What the gates need to know about a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupState {
    /// displayName.
    pub display_name: Option<String>,
    /// Why Graph cannot change its membership (dynamic, mail-enabled, synced from on-premises…), if so.
    pub not_manageable: Option<String>,
}

/// Gate 3c, the ledger: a plan the ledger has as finished is refused wherever its file sits now (22), and a
/// cancelled plan is refused (28). `cancellation` is the cancellation file found in the ledger and the result of
/// verifying it: one that does not verify still stops the plan (someone wanted it stopped), and the message says
/// how to proceed if it is not genuine. `rebuilding` is `Some` for the run that only writes a missing receipt
/// from the plan's own finished journal: it sends nothing, so a finished record does not stop it.
pub fn check_ledger(
    plan: &Plan,
    plan_sha256: &str,
    ledger_dir: &Path,
    record: Option<&Record>,
    cancellation: Option<&(PathBuf, std::result::Result<Cancellation, String>)>,
    rebuilding: Option<()>,
) -> Result<()> {
    if let Some(record) = record {
        if record.plan_sha256 != plan_sha256 {
            return Err(Error::Replay(format!(
                "the ledger {} has plan id {} for a file with other contents (sha256 {}); refusing a second \
                 document under the same id. Ask for a new plan",
                ledger_dir.display(),
                plan.plan_id,
                record.plan_sha256
            )));
        }
        if let Some(finished) = record.finished.as_ref().filter(|_| rebuilding.is_none()) {
            return Err(Error::Replay(format!(
                "plan {} was already applied: it finished ({}) at {}, started by {} from {} (ledger {}; receipt \
                 {}). A plan is applied once, wherever its file is copied; to make more changes, make a new plan",
                plan.plan_id,
                finished.status.as_str(),
                timestamp::format(&finished.at),
                crate::terminal::escape(&record.started.by),
                crate::terminal::escape(&record.started.plan_file),
                ledger_dir.display(),
                crate::terminal::escape(&finished.receipt)
            )));
        }
    }
    match cancellation {
        None => Ok(()),
        Some((_, Ok(c))) => Err(Error::Cancelled(format!(
            "plan {} was cancelled by {} at {}{}; apply refuses a cancelled plan and sent nothing. Ask for a new \
             plan",
            plan.plan_id,
            crate::terminal::escape(&c.cancelled_by),
            timestamp::format(&c.cancelled_at),
            c.reason.as_deref().map(|r| format!(" (reason: {})", crate::terminal::escape(r))).unwrap_or_default()
        ))),
        Some((path, Err(problem))) => Err(Error::Cancelled(format!(
            "the ledger holds a cancellation of plan {} ({}), but it does not verify: {}. apply stops and sent \
             nothing. If that cancellation is not genuine, find out who wrote it; once you are sure, remove it and \
             run again",
            plan.plan_id,
            path.display(),
            crate::terminal::escape(problem)
        ))),
    }
}

/// Gate 3d: a plan the ledger has as started (and not finished) resumes only with the journal it was started
/// with: `journal` (absolute) must be that file, and must record the start (22 otherwise). This is what stops a
/// copy of a half-applied plan, in another folder with a fresh journal, from being applied a second time.
pub fn check_ledger_journal(
    plan: &Plan,
    record: Option<&Record>,
    journal: &Path,
    progress: &PlanProgress,
) -> Result<()> {
    let Some(record) = record.filter(|r| r.finished.is_none()) else { return Ok(()) };
    let started = &record.started;
    if Path::new(&started.journal) != journal {
        return Err(Error::Replay(format!(
            "plan {} was started at {} by {} with the journal {}; it resumes only with that journal, not {}. Run \
             the same command with --journal {}",
            plan.plan_id,
            timestamp::format(&started.at),
            crate::terminal::escape(&started.by),
            crate::terminal::escape(&started.journal),
            journal.display(),
            crate::terminal::escape(&started.journal)
        )));
    }
    if progress.runs == 0 {
        return Err(Error::Replay(format!(
            "plan {} was started at {} by {}, but its journal {} no longer records that start (it was replaced or \
             emptied). Keep what is left of it for the audit, and ask for a new plan",
            plan.plan_id,
            timestamp::format(&started.at),
            crate::terminal::escape(&started.by),
            journal.display()
        )));
    }
    Ok(())
}

/// Gate 4: the plan's tenant is the token's tenant. A plan made from exports names no tenant; then the group
/// ids (which are unique across tenants) are what ties it to the tenant, and gate 5 checks them.
pub fn check_tenant(plan: &Plan, token_tenant: &str) -> Result<()> {
    match &plan.tenant_id {
        Some(planned) if !planned.trim().eq_ignore_ascii_case(token_tenant.trim()) => {
            Err(Error::TenantMismatch(format!(
                "the plan was made for tenant {planned}, but the credentials sign in to tenant {token_tenant}; \
                 use the credentials of the plan's tenant, or ask for a plan made against this one"
            )))
        }
        _ => Ok(()),
    }
}

/// Gate 5: the group exists and Graph can change its membership.
pub fn check_group(group: &GroupPlan, state: Option<&GroupState>) -> Result<()> {
    match state {
        None => Err(Error::GroupNotManageable(format!(
            "group {} no longer exists (or the credentials cannot see it)",
            group.label()
        ))),
        Some(GroupState { not_manageable: Some(reason), .. }) => Err(Error::GroupNotManageable(format!(
            "group {} cannot be changed through Microsoft Graph: {reason}",
            group.label()
        ))),
        Some(_) => Ok(()),
    }
}

/// Gate 6: a plan that finished is never applied again; a plan whose id was started with other file contents
/// is refused too. An interrupted plan passes (it resumes). `receipt_exists` covers a journal that was moved.
pub fn check_replay(plan: &Plan, plan_sha256: &str, progress: &PlanProgress, receipt_exists: bool) -> Result<()> {
    if let Some((at, status)) = &progress.finished {
        return Err(Error::Replay(format!(
            "plan {} was already applied (finished {} at {}); a plan is applied once. To make more changes, \
                 make a new plan",
            plan.plan_id,
            status.as_str(),
            crate::plan::timestamp::format(at)
        )));
    }
    if let Some(recorded) = &progress.plan_sha256 {
        if recorded != plan_sha256 {
            return Err(Error::Replay(format!(
                "plan id {} was started from a file with other contents (sha256 {recorded}); refusing a second \
                     document under the same id",
                plan.plan_id
            )));
        }
    }
    if receipt_exists && progress.runs == 0 {
        return Err(Error::Replay(format!(
            "plan {} has a receipt already, so it was applied; the journal given does not show it. Use the \
                 journal that belongs to the receipt, or make a new plan",
            plan.plan_id
        )));
    }
    Ok(())
}

/// Who joined and who left a group since planning (user members only).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Drift {
    /// Members now that were not members at planning time.
    pub joined: Vec<ObjectId>,
    /// Members at planning time that are not members now.
    pub left: Vec<ObjectId>,
}

impl Drift {
    /// Compares the planning-time membership with the current one.
    pub fn between(planned: &[ObjectId], current: &BTreeSet<ObjectId>) -> Drift {
        let planned: BTreeSet<&ObjectId> = planned.iter().collect();
        Drift {
            joined: current.iter().filter(|id| !planned.contains(id)).cloned().collect(),
            left: planned.iter().filter(|id| !current.contains(**id)).map(|id| (*id).clone()).collect(),
        }
    }

    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.joined.is_empty() && self.left.is_empty()
    }
}

/// One group's share of the work, after the gates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupWork {
    /// The group.
    pub group_id: ObjectId,
    /// The label people know it by.
    pub label: String,
    /// What changed since planning.
    pub drift: Drift,
    /// The part of the drift that `--strict` refuses (see [`plan_group`]).
    pub strict_drift: Drift,
    /// How many user members the group has now.
    pub member_count: u64,
    /// How many user members the plan was made against.
    pub planned_count: u64,
    /// Graph's displayName of the group now (the review shows it, and the plan's label beside it when it differs).
    pub live_name: Option<String>,
    /// UPN and display name of the users the drift names, where known (from the member read, the plan, or the
    /// users read).
    pub names: std::collections::BTreeMap<ObjectId, (String, Option<String>)>,
    /// Adds still to send.
    pub adds: Vec<ObjectId>,
    /// Removes still to send.
    pub removes: Vec<ObjectId>,
    /// Changes that are no longer needed (the group already is as planned for the user); recorded without a write.
    pub settled: Vec<ChangeResult>,
    /// Changes that already have an outcome in the journal (an interrupted run).
    pub recorded: u64,
}

impl GroupWork {
    /// The number of changes this run still has to give an outcome to.
    pub fn pending(&self) -> u64 {
        (self.adds.len() + self.removes.len() + self.settled.len()) as u64
    }
}

/// Gate 7's arithmetic for one group: drift, and which changes still need a write.
///
/// A change that already has an outcome in the journal is left alone. Of the others, an add whose user is
/// already a member and a remove whose user is already gone are settled without a write. On a resumed run, the
/// changes of this plan are expected to differ from the precondition (the interrupted run may have made them),
/// so `strict_drift` leaves those users out; on a first run it is the whole drift.
pub fn plan_group(group: &GroupPlan, current: &BTreeSet<ObjectId>, progress: &PlanProgress) -> GroupWork {
    let drift = Drift::between(&group.precondition.member_ids, current);
    let resuming = progress.runs > 0;
    let strict_drift = if resuming {
        let planned: BTreeSet<&ObjectId> = group.changes.iter().map(|c| &c.user_id).collect();
        Drift {
            joined: drift.joined.iter().filter(|u| !planned.contains(u)).cloned().collect(),
            left: drift.left.iter().filter(|u| !planned.contains(u)).cloned().collect(),
        }
    } else {
        drift.clone()
    };
    let mut work = GroupWork {
        group_id: group.group_id.clone(),
        label: group.label(),
        drift,
        strict_drift,
        member_count: current.len() as u64,
        planned_count: group.precondition.member_count,
        live_name: None,
        names: Default::default(),
        adds: Vec::new(),
        removes: Vec::new(),
        settled: Vec::new(),
        recorded: 0,
    };
    for change in &group.changes {
        if progress.outcomes.contains_key(&(group.group_id.clone(), change.user_id.clone())) {
            work.recorded += 1;
            continue;
        }
        let is_member = current.contains(&change.user_id);
        let settled = |outcome: Outcome, detail: &str| ChangeResult {
            group_id: group.group_id.clone(),
            user_id: change.user_id.clone(),
            action: change.action,
            outcome,
            detail: Some(detail.to_string()),
            error: None,
        };
        match (change.action, is_member) {
            (Action::Add, true) => {
                work.settled.push(settled(Outcome::AlreadyMember, "already a member when apply began; no write sent"))
            }
            (Action::Remove, false) => work
                .settled
                .push(settled(Outcome::AlreadyAbsent, "already not a member when apply began; no write sent")),
            (Action::Add, false) => work.adds.push(change.user_id.clone()),
            (Action::Remove, true) => work.removes.push(change.user_id.clone()),
        }
    }
    work
}

/// Gate 7 under `--strict`: any drift refuses.
pub fn check_strict_drift(works: &[GroupWork]) -> Result<()> {
    let drifted: Vec<String> = works
        .iter()
        .filter(|w| !w.strict_drift.is_empty())
        .map(|w| format!("{} ({} joined, {} left)", w.label, w.strict_drift.joined.len(), w.strict_drift.left.len()))
        .collect();
    if drifted.is_empty() {
        return Ok(());
    }
    Err(Error::Drift(format!(
        "membership changed since the plan was made: {}; --strict refuses a stale plan. Make a new plan, or run \
             without --strict to apply only the changes still needed",
        drifted.join("; ")
    )))
}

/// Gate 5b: when the plan names the group, Graph's displayName must be that name (case-insensitive), or the
/// admin says `--accept-group-rename` (27). A plan made for one group and pointed at another fails here.
pub fn check_group_name(group: &GroupPlan, live: Option<&str>, accept: bool) -> Result<()> {
    let (Some(planned), Some(live)) = (group.display_name.as_deref(), live) else { return Ok(()) };
    if accept || planned.trim().eq_ignore_ascii_case(live.trim()) {
        return Ok(());
    }
    Err(Error::PlanMismatch(format!(
        "the plan names group {} '{}', but Microsoft Graph calls it '{}': the plan may have been made for another \
         group. Check the group; if it was only renamed, run again with --accept-group-rename",
        group.group_id,
        crate::terminal::escape(planned),
        crate::terminal::escape(live)
    )))
}

/// The drift limit: `max_drift_percent` of the members a plan was made against (default 20).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DriftLimit {
    /// The percentage.
    pub max_percent: f64,
    /// `--accept-drift`: apply whatever the drift.
    pub accept: bool,
    /// `--strict`: refuse any drift.
    pub strict: bool,
}

impl Default for DriftLimit {
    fn default() -> DriftLimit {
        DriftLimit { max_percent: 20.0, accept: false, strict: false }
    }
}

impl DriftLimit {
    /// The most members that may have joined and left since planning: max(10, `max_percent` × planned / 100).
    pub fn allowed(&self, planned: u64) -> u64 {
        ((self.max_percent * planned as f64 / 100.0).floor() as u64).max(10)
    }
}

/// Gate 7: drift (members joined plus members left since planning, not counting this plan's own changes
/// made by an earlier run) above the limit refuses (23) unless `--accept-drift`; `--strict` refuses any drift.
pub fn check_drift(works: &[GroupWork], limit: DriftLimit) -> Result<()> {
    if limit.strict {
        return check_strict_drift(works);
    }
    if limit.accept {
        return Ok(());
    }
    for work in works {
        let drift = (work.strict_drift.joined.len() + work.strict_drift.left.len()) as u64;
        let allowed = limit.allowed(work.planned_count);
        if drift > allowed {
            return Err(Error::Drift(format!(
                "group {}: {} members joined and {} left since the plan was made, {drift} in all, over the limit of \
                 {allowed} (max(10, {}% of the {} members it was planned against)). The plan may be for another \
                 group, or too old: make a new plan. If the drift is expected, run again with --accept-drift \
                 (or raise --max-drift-percent)",
                work.label,
                work.strict_drift.joined.len(),
                work.strict_drift.left.len(),
                limit.max_percent,
                work.planned_count
            )));
        }
    }
    Ok(())
}

/// A user whose UPN differs from the plan's (accepted with `--accept-renames`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Rename {
    /// The group.
    pub group_id: ObjectId,
    /// The user.
    pub user_id: ObjectId,
    /// The UPN in the plan (what the reviewer saw).
    pub planned_upn: String,
    /// The UPN Graph gives now.
    pub graph_upn: String,
}

/// What [`check_objects`] found: the renames to show, and the adds whose user was deleted since planning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Objects {
    /// UPNs that differ from the plan's.
    pub renames: Vec<Rename>,
    /// (group, user) of adds whose user is among the deleted items: settled, not sent.
    pub deleted: Vec<(ObjectId, ObjectId)>,
}

/// What Graph says about the objects a plan acts on: the members of each group (by group), the users read by id,
/// and the deleted items looked up for the ids `/users` did not return.
#[derive(Debug, Default)]
pub struct Seen<'a> {
    /// Each group's members, by group id.
    pub members: std::collections::BTreeMap<ObjectId, &'a [GroupMember]>,
    /// Users read by id.
    pub users: std::collections::BTreeMap<ObjectId, &'a DirectoryUser>,
    /// Deleted items, by id.
    pub deleted: std::collections::BTreeMap<ObjectId, &'a DeletedItem>,
}

/// Gate 6b: every object the run will add or remove is a user the admin can see, with the plan's UPN (27).
/// A remove or an add already in effect is judged by the member read (its `@odata.type` and UPN); any other
/// add by the users read, and when `/users` does not return it, by the deleted items: a deleted user is settled
/// ("deleted since planning"), anything else refuses the whole plan. A UPN that differs from the plan's
/// (case-insensitive) refuses unless `accept_renames`.
pub fn check_objects(plan: &Plan, works: &[GroupWork], seen: &Seen<'_>, accept_renames: bool) -> Result<Objects> {
    let mut found = Objects::default();
    let mut wrong = Vec::new();
    for (group, work) in plan.groups.iter().zip(works) {
        let members = seen.members.get(&group.group_id).copied().unwrap_or(&[]);
        let pending: BTreeSet<&ObjectId> =
            work.adds.iter().chain(&work.removes).chain(work.settled.iter().map(|s| &s.user_id)).collect();
        for change in group.changes.iter().filter(|c| pending.contains(&c.user_id)) {
            let graph_upn = if let Some(m) = members.iter().find(|m| m.id == change.user_id) {
                if m.kind != MemberKind::User {
                    wrong.push(describe(change, &format!("a {} member of the group, not a user", m.kind.label())));
                    continue;
                }
                m.upn.clone()
            } else if change.action == Action::Remove {
                continue; // not a member: nothing is sent
            } else if let Some(u) = seen.users.get(&change.user_id) {
                Some(u.upn.clone())
            } else {
                match seen.deleted.get(&change.user_id) {
                    Some(DeletedItem::User { .. }) => {
                        found.deleted.push((group.group_id.clone(), change.user_id.clone()));
                        continue;
                    }
                    Some(DeletedItem::Other(kind)) => {
                        wrong.push(describe(change, &format!("a deleted {}, not a user", kind.label())))
                    }
                    _ => wrong.push(describe(change, "not a user the admin's credentials can see")),
                }
                continue;
            };
            let graph_upn = graph_upn.unwrap_or_default();
            if !graph_upn.eq_ignore_ascii_case(&change.upn) {
                found.renames.push(Rename {
                    group_id: group.group_id.clone(),
                    user_id: change.user_id.clone(),
                    planned_upn: change.upn.clone(),
                    graph_upn,
                });
            }
        }
    }
    if !wrong.is_empty() {
        return Err(Error::PlanMismatch(format!(
            "the plan acts on objects that are not what its labels say: {}. Nothing was sent; do not apply this \
             plan, and ask the planner how it was made",
            wrong.join("; ")
        )));
    }
    if !found.renames.is_empty() && !accept_renames {
        let list: Vec<String> = found
            .renames
            .iter()
            .map(|r| {
                format!(
                    "{} is now {} ({})",
                    crate::terminal::escape(&r.planned_upn),
                    crate::terminal::escape(&r.graph_upn),
                    r.user_id
                )
            })
            .collect();
        let more = list.len().saturating_sub(10);
        let shown = list.iter().take(10).cloned().collect::<Vec<_>>().join("; ");
        let shown = if more > 0 { format!("{shown}; and {more} more") } else { shown };
        return Err(Error::PlanMismatch(format!(
            "{} user(s) have another UPN in Microsoft Graph than in the plan: {}. A label that hides another person \
             must not pass silently: check each; if they were only renamed, run again with --accept-renames",
            list.len(),
            shown
        )));
    }
    Ok(found)
}

/// The ids `apply` reads from `/users` before any write: the adds not already in a group (by any kind), then,
/// in the room the last `$batch` leaves (or one `$batch` when there are no adds), members who left since
/// planning, so that the drift list can name them. Returns (the adds, every id to read). With ids read 300 to a
/// request, the reads stay within ceil(adds/300) requests, plus one when there are no adds.
pub fn ids_to_read(works: &[GroupWork], members: &[Vec<GroupMember>]) -> (Vec<ObjectId>, Vec<ObjectId>) {
    const PER_REQUEST: usize = 300;
    const NAMED: usize = 10;
    let mut adds = BTreeSet::new();
    for (work, members) in works.iter().zip(members) {
        let present: BTreeSet<&ObjectId> = members.iter().map(|m| &m.id).collect();
        adds.extend(work.adds.iter().filter(|id| !present.contains(id)).cloned());
    }
    let adds: Vec<ObjectId> = adds.into_iter().collect();
    let room = if adds.is_empty() { PER_REQUEST } else { adds.len().div_ceil(PER_REQUEST) * PER_REQUEST - adds.len() };
    let mut all = adds.clone();
    let known: BTreeSet<&ObjectId> = adds.iter().collect();
    let left = works.iter().flat_map(|w| w.strict_drift.left.iter().take(NAMED)).filter(|id| !known.contains(id));
    let left: BTreeSet<ObjectId> = left.cloned().collect();
    all.extend(left.into_iter().take(room));
    (adds, all)
}

/// Moves the adds whose user was deleted since planning from the work to the settled changes, with their own
/// outcome ([`Outcome::DeletedSincePlanning`]): nothing is sent for them, and they are not failures.
pub fn settle_deleted(works: &mut [GroupWork], deleted: &[(ObjectId, ObjectId)]) {
    for work in works {
        let gone: BTreeSet<&ObjectId> = deleted.iter().filter(|(g, _)| *g == work.group_id).map(|(_, u)| u).collect();
        let (keep, settled): (Vec<ObjectId>, Vec<ObjectId>) = work.adds.drain(..).partition(|u| !gone.contains(u));
        work.adds = keep;
        for user in settled {
            work.settled.push(ChangeResult {
                group_id: work.group_id.clone(),
                user_id: user,
                action: Action::Add,
                outcome: Outcome::DeletedSincePlanning,
                detail: Some("the user was deleted since planning (it is in the deleted items); no write sent".into()),
                error: None,
            });
        }
    }
}

/// Fills [`GroupWork::names`] for the users the drift names: from the member read, the users read, or the
/// plan's own changes.
pub fn name_drift(work: &mut GroupWork, group: &GroupPlan, seen: &Seen<'_>) {
    let members = seen.members.get(&group.group_id).copied().unwrap_or(&[]);
    let ids: Vec<ObjectId> = work.drift.joined.iter().chain(&work.drift.left).cloned().collect();
    for id in ids {
        let name = if let Some(m) = members.iter().find(|m| m.id == id) {
            m.upn.clone().map(|u| (u, m.display_name.clone()))
        } else if let Some(u) = seen.users.get(&id) {
            Some((u.upn.clone(), u.display_name.clone()))
        } else {
            group.changes.iter().find(|c| c.user_id == id).map(|c| (c.upn.clone(), c.display_name.clone()))
        };
        if let Some(name) = name {
            work.names.insert(id, name);
        }
    }
}

fn describe(change: &Change, what: &str) -> String {
    format!(
        "the {} labelled {} is object {}, {what}",
        change.action.as_str(),
        crate::terminal::escape(&change.upn),
        change.user_id
    )
}

/// The removal limits (gate 8).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// The most removals in one apply, over all groups.
    pub max_removals: u64,
    /// The most removals from one group, as a percentage of its current user members.
    pub max_removal_percent: f64,
}

impl Default for Thresholds {
    fn default() -> Thresholds {
        Thresholds { max_removals: 500, max_removal_percent: 20.0 }
    }
}

/// Gate 8: the removals still to send stay within both limits.
pub fn check_thresholds(works: &[GroupWork], limits: Thresholds) -> Result<()> {
    let total: u64 = works.iter().map(|w| w.removes.len() as u64).sum();
    if total > limits.max_removals {
        return Err(Error::Threshold(format!(
            "the plan removes {total} members, over the limit of {} (--max-removals). Check the plan; if the \
                 removals are intended, run again with --max-removals {total}",
            limits.max_removals
        )));
    }
    for work in works {
        let removes = work.removes.len() as u64;
        if removes == 0 {
            continue;
        }
        let percent = removes as f64 * 100.0 / (work.member_count.max(1) as f64);
        if percent > limits.max_removal_percent {
            return Err(Error::Threshold(format!(
                "group {}: the plan removes {removes} of its {} members ({percent:.1}%), over the limit of {}% \
                     (--max-removal-percent). Check the plan; if the removals are intended, run again with \
                     --max-removal-percent {}",
                work.label,
                work.member_count,
                limits.max_removal_percent,
                percent.ceil()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::FinishStatus;
    use crate::error::exit;
    use crate::plan::{Change, Counts, Precondition};
    use chrono::DateTime;

    use crate::fixtures::{change, id};

    fn group(members: &[u32], changes: Vec<Change>) -> GroupPlan {
        let ids: Vec<ObjectId> = members.iter().map(|n| id(*n)).collect();
        GroupPlan {
            group_id: id(200),
            display_name: Some("Staff".into()),
            options: Default::default(),
            inputs: vec![],
            precondition: Precondition::from_members(&ids),
            counts: Counts::tally(&changes, &[]),
            changes,
            not_acted_on: vec![],
        }
    }

    fn set(ns: &[u32]) -> BTreeSet<ObjectId> {
        ns.iter().map(|n| id(*n)).collect()
    }

    #[test]
    fn no_drift_means_every_change_is_needed() {
        let g = group(&[1, 2, 3], vec![change(Action::Add, 4), change(Action::Remove, 1)]);
        let w = plan_group(&g, &set(&[1, 2, 3]), &PlanProgress::default());
        assert!(w.drift.is_empty());
        assert_eq!(w.adds, vec![id(4)]);
        assert_eq!(w.removes, vec![id(1)]);
        assert!(w.settled.is_empty());
        assert_eq!(w.pending(), 2);
        assert!(check_strict_drift(&[w]).is_ok());
    }

    #[test]
    fn drift_settles_changes_no_longer_needed_and_strict_refuses() {
        let g = group(&[1, 2, 3], vec![change(Action::Add, 4), change(Action::Remove, 1), change(Action::Add, 5)]);
        // Since planning: 4 joined (the planned add), 1 left (the planned remove), 9 joined (unrelated).
        let w = plan_group(&g, &set(&[2, 3, 4, 9]), &PlanProgress::default());
        assert_eq!(w.drift.joined, vec![id(4), id(9)]);
        assert_eq!(w.drift.left, vec![id(1)]);
        assert_eq!(w.adds, vec![id(5)]);
        assert!(w.removes.is_empty());
        let outcomes: Vec<Outcome> = w.settled.iter().map(|s| s.outcome).collect();
        assert_eq!(outcomes, vec![Outcome::AlreadyMember, Outcome::AlreadyAbsent]);
        let err = check_strict_drift(&[w]).unwrap_err();
        assert_eq!(err.exit_code(), exit::DRIFT);
        assert!(err.to_string().contains("2 joined, 1 left"), "{err}");
    }

    #[test]
    fn resume_skips_recorded_changes_and_strict_ignores_this_plans_users() {
        let g = group(&[1, 2, 3], vec![change(Action::Add, 4), change(Action::Remove, 1), change(Action::Add, 5)]);
        let mut progress = PlanProgress { runs: 1, ..Default::default() };
        progress.outcomes.insert(
            (id(200), id(4)),
            ChangeResult {
                group_id: id(200),
                user_id: id(4),
                action: Action::Add,
                outcome: Outcome::Applied,
                detail: None,
                error: None,
            },
        );
        // The interrupted run added 4 (recorded) and removed 1 (not recorded before the crash).
        let w = plan_group(&g, &set(&[2, 3, 4]), &progress);
        assert_eq!(w.recorded, 1);
        assert_eq!(w.adds, vec![id(5)]);
        assert_eq!(w.settled.len(), 1);
        assert!(w.strict_drift.is_empty());
        assert!(check_strict_drift(&[w]).is_ok());
        // Someone else's change still counts as drift on a resume.
        let w = plan_group(&g, &set(&[2, 3, 4, 8]), &progress);
        assert_eq!(w.strict_drift.joined, vec![id(8)]);
    }

    #[test]
    fn thresholds_count_and_percent() {
        let members: Vec<u32> = (1..=10).collect();
        let g = group(&members, vec![change(Action::Remove, 1), change(Action::Remove, 2), change(Action::Remove, 3)]);
        let w = plan_group(&g, &set(&members), &PlanProgress::default());
        let limits = Thresholds::default();
        let err = check_thresholds(std::slice::from_ref(&w), limits).unwrap_err();
        assert_eq!(err.exit_code(), exit::THRESHOLD);
        assert!(err.to_string().contains("30.0%"), "{err}");
        assert!(check_thresholds(std::slice::from_ref(&w), Thresholds { max_removal_percent: 30.0, ..limits }).is_ok());
        let err = check_thresholds(&[w], Thresholds { max_removals: 2, max_removal_percent: 100.0 }).unwrap_err();
        assert!(err.to_string().contains("--max-removals 3"), "{err}");
    }

    #[test]
    fn tenant_gate() {
        let mut plan = Plan {
            format: crate::plan::FORMAT_NAME.into(),
            format_version: "1.0".into(),
            plan_id: uuid::Uuid::nil(),
            created_at: DateTime::from_timestamp(0, 0).unwrap(),
            expires_at: DateTime::from_timestamp(10, 0).unwrap(),
            signer: "a".into(),
            tool_version: "t".into(),
            tenant_id: Some("AAAA".into()),
            entra_actor: None,
            groups: vec![],
        };
        assert!(check_tenant(&plan, "aaaa").is_ok());
        assert_eq!(check_tenant(&plan, "bbbb").unwrap_err().exit_code(), exit::TENANT_MISMATCH);
        plan.tenant_id = None;
        assert!(check_tenant(&plan, "bbbb").is_ok());
    }

    #[test]
    fn replay_gate() {
        let plan = Plan {
            format: crate::plan::FORMAT_NAME.into(),
            format_version: "1.0".into(),
            plan_id: uuid::Uuid::nil(),
            created_at: DateTime::from_timestamp(0, 0).unwrap(),
            expires_at: DateTime::from_timestamp(10, 0).unwrap(),
            signer: "a".into(),
            tool_version: "t".into(),
            tenant_id: None,
            entra_actor: None,
            groups: vec![],
        };
        let fresh = PlanProgress::default();
        assert!(check_replay(&plan, "aa", &fresh, false).is_ok());
        assert_eq!(check_replay(&plan, "aa", &fresh, true).unwrap_err().exit_code(), exit::REPLAY);
        let interrupted = PlanProgress { runs: 1, plan_sha256: Some("aa".into()), ..Default::default() };
        assert!(check_replay(&plan, "aa", &interrupted, false).is_ok());
        assert_eq!(check_replay(&plan, "bb", &interrupted, false).unwrap_err().exit_code(), exit::REPLAY);
        let finished = PlanProgress {
            finished: Some((DateTime::from_timestamp(5, 0).unwrap(), FinishStatus::Partial)),
            ..interrupted
        };
        assert_eq!(check_replay(&plan, "aa", &finished, false).unwrap_err().exit_code(), exit::REPLAY);
    }

    #[test]
    fn group_gate() {
        let g = group(&[], vec![]);
        assert_eq!(check_group(&g, None).unwrap_err().exit_code(), exit::GROUP_NOT_MANAGEABLE);
        let dynamic = GroupState { display_name: None, not_manageable: Some("dynamic membership".into()) };
        assert!(check_group(&g, Some(&dynamic)).unwrap_err().to_string().contains("dynamic"));
        assert!(check_group(&g, Some(&GroupState { display_name: None, not_manageable: None })).is_ok());
    }

    fn bare_plan() -> Plan {
        Plan {
            format: crate::plan::FORMAT_NAME.into(),
            format_version: "1.0".into(),
            plan_id: uuid::Uuid::nil(),
            created_at: DateTime::from_timestamp(0, 0).unwrap(),
            expires_at: DateTime::from_timestamp(10, 0).unwrap(),
            signer: "a".into(),
            tool_version: "t".into(),
            tenant_id: None,
            entra_actor: None,
            groups: vec![],
        }
    }

    fn record(finished: bool) -> Record {
        let started = crate::ledger::Started {
            at: DateTime::from_timestamp(1, 0).unwrap(),
            by: "admin@box".into(),
            plan_file: "plan.json".into(),
            journal: "/a/plan.json.journal.jsonl".into(),
        };
        let mut r = Record::started(uuid::Uuid::nil(), "aa", started);
        if finished {
            r.finished = Some(crate::ledger::Finished {
                at: DateTime::from_timestamp(2, 0).unwrap(),
                status: FinishStatus::Complete,
                receipt: "/a/plan.json.receipt.json".into(),
            });
        }
        r
    }

    #[test]
    fn ledger_gate() {
        let plan = bare_plan();
        let dir = Path::new("/ledger");
        assert!(check_ledger(&plan, "aa", dir, None, None, None).is_ok());
        assert!(check_ledger(&plan, "aa", dir, Some(&record(false)), None, None).is_ok());
        let err = check_ledger(&plan, "aa", dir, Some(&record(true)), None, None).unwrap_err();
        assert_eq!(err.exit_code(), exit::REPLAY);
        assert!(err.to_string().contains("already applied"), "{err}");
        // Only writing a missing receipt from the plan's own journal is let through.
        assert!(check_ledger(&plan, "aa", dir, Some(&record(true)), None, Some(())).is_ok());
        // Another document under the same id.
        assert_eq!(
            check_ledger(&plan, "bb", dir, Some(&record(false)), None, None).unwrap_err().exit_code(),
            exit::REPLAY
        );
        let c = Cancellation::new(uuid::Uuid::nil(), "aa", "approver@x", DateTime::from_timestamp(3, 0).unwrap(), None);
        let cancelled = (PathBuf::from("/ledger/x.cancel.json"), Ok(c));
        let err = check_ledger(&plan, "aa", dir, None, Some(&cancelled), None).unwrap_err();
        assert_eq!(err.exit_code(), exit::CANCELLED);
        assert!(err.to_string().contains("approver@x"), "{err}");
        let forged = (PathBuf::from("/ledger/x.cancel.json"), Err("bad signature".to_string()));
        let err = check_ledger(&plan, "aa", dir, None, Some(&forged), None).unwrap_err();
        assert_eq!(err.exit_code(), exit::CANCELLED);
        assert!(err.to_string().contains("does not verify"), "{err}");
    }

    #[test]
    fn a_started_plan_resumes_only_with_its_own_journal() {
        let plan = bare_plan();
        let started = PlanProgress { runs: 1, ..Default::default() };
        let own = Path::new("/a/plan.json.journal.jsonl");
        assert!(check_ledger_journal(&plan, None, Path::new("/b/j"), &PlanProgress::default()).is_ok());
        assert!(check_ledger_journal(&plan, Some(&record(false)), own, &started).is_ok());
        let err =
            check_ledger_journal(&plan, Some(&record(false)), Path::new("/b/j"), &PlanProgress::default()).unwrap_err();
        assert_eq!(err.exit_code(), exit::REPLAY);
        assert!(err.to_string().contains("--journal /a/plan.json.journal.jsonl"), "{err}");
        let err = check_ledger_journal(&plan, Some(&record(false)), own, &PlanProgress::default()).unwrap_err();
        assert!(err.to_string().contains("no longer records"), "{err}");
    }
}
