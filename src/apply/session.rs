//! One apply, start to end: the directory gates ([`prepare`]), then the writes, journal and receipt
//! ([`execute`]). The command line sits between the two to show the review and ask for consent.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::executor::{self, Config, ExecError, Sink, Stats, Transport, Written};
use super::gates::{self, DirectoryReads, DriftLimit, GroupWork, Thresholds};
use super::journal::{self, Chain, Event, Journal, PlanProgress, WriteRecord};
use super::receipt::{self, JournalAnchor, Receipt, ReceiptInput};
use super::{Applier, ChangeResult, OutcomeCounts};
use crate::directory::MemberKind;
use crate::error::{Error, Result};
use crate::identity::ObjectId;
use crate::plan::Plan;

/// The time, passed in so tests control it.
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock (the one place `apply` reads it).
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// The gates' options.
#[derive(Debug, Clone, Copy, Default)]
pub struct GateOptions {
    /// Refuse on any drift since planning.
    pub strict: bool,
    /// The removal limits.
    pub thresholds: Thresholds,
    /// The drift limit (`--max-drift-percent`, `--accept-drift`; `strict` above also refuses any drift).
    pub drift: gates::DriftLimit,
    /// `--accept-renames`: users whose UPN changed since planning pass (listed in the review and the receipt).
    pub accept_renames: bool,
    /// `--accept-group-rename`: a group whose name differs from the plan's passes.
    pub accept_group_rename: bool,
}

/// The result of the gates: the work a run will do.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The token's tenant.
    pub tenant_id: String,
    /// One entry per group of the plan, in the plan's order.
    pub works: Vec<GroupWork>,
    /// What the journal already holds for this plan.
    pub progress: PlanProgress,
    /// The journal as read by the gates (`None` when there is none yet).
    pub journal: Option<Chain>,
    /// Users whose UPN in Graph differs from the plan's (accepted with `--accept-renames`).
    pub renames: Vec<gates::Rename>,
}

impl Prepared {
    /// True when earlier runs of this plan were interrupted and this run finishes them.
    pub fn resuming(&self) -> bool {
        self.progress.runs > 0
    }

    /// Changes without an outcome yet.
    pub fn pending(&self) -> u64 {
        self.works.iter().map(GroupWork::pending).sum()
    }
}

/// Gates 4 to 8, in order (1 to 3 are the signature verification, done before). Reads the tenant, each
/// group, the journal and each group's members; sends nothing.
pub async fn prepare<R: DirectoryReads>(
    reads: &R,
    plan: &Plan,
    plan_sha256: &str,
    journal_path: &Path,
    receipt_path: &Path,
    options: GateOptions,
) -> Result<Prepared> {
    // 4. Tenant.
    let tenant_id = reads.tenant_id().await?;
    gates::check_tenant(plan, &tenant_id)?;
    // 5. Groups exist, are manageable, and are the groups the plan names.
    let mut live_names = Vec::with_capacity(plan.groups.len());
    for group in &plan.groups {
        let state = reads.group(&group.group_id).await?;
        gates::check_group(group, state.as_ref())?;
        let live = state.and_then(|s| s.display_name);
        gates::check_group_name(group, live.as_deref(), options.accept_group_rename)?;
        live_names.push(live);
    }
    // 6. Replay.
    let chain = journal::read(journal_path)?;
    let progress = match &chain {
        Some(chain) => PlanProgress::of(chain, plan.plan_id).map_err(|e| journal::chain_error(journal_path, e))?,
        None => PlanProgress::default(),
    };
    gates::check_replay(plan, plan_sha256, &progress, receipt_path.exists())?;
    // 6b. The objects: read every one the run will add or remove.
    let mut members = Vec::with_capacity(plan.groups.len());
    let mut works = Vec::with_capacity(plan.groups.len());
    for (group, live) in plan.groups.iter().zip(live_names) {
        let read = reads.members(&group.group_id).await?;
        let current: BTreeSet<ObjectId> =
            read.iter().filter(|m| m.kind == MemberKind::User).map(|m| m.id.clone()).collect();
        let mut work = gates::plan_group(group, &current, &progress);
        work.live_name = live;
        members.push(read);
        works.push(work);
    }
    let (adds, lookups) = gates::ids_to_read(&works, &members);
    let users = if lookups.is_empty() { Vec::new() } else { reads.users_by_id(&lookups).await? };
    let found: BTreeSet<&ObjectId> = users.iter().map(|u| &u.id).collect();
    let missing: Vec<ObjectId> = adds.into_iter().filter(|id| !found.contains(id)).collect();
    let deleted = if missing.is_empty() { Vec::new() } else { reads.deleted_items(&missing).await? };
    let seen = gates::Seen {
        members: plan.groups.iter().map(|g| g.group_id.clone()).zip(members.iter().map(Vec::as_slice)).collect(),
        users: users.iter().map(|u| (u.id.clone(), u)).collect(),
        deleted: deleted.iter().map(|(id, d)| (id.clone(), d)).collect(),
    };
    let objects = gates::check_objects(plan, &works, &seen, options.accept_renames)?;
    gates::settle_deleted(&mut works, &objects.deleted);
    for (work, group) in works.iter_mut().zip(&plan.groups) {
        gates::name_drift(work, group, &seen);
    }
    // 7. Drift.
    gates::check_drift(&works, DriftLimit { strict: options.strict, ..options.drift })?;
    // 8. Thresholds.
    gates::check_thresholds(&works, options.thresholds)?;
    Ok(Prepared { tenant_id, works, progress, journal: chain, renames: objects.renames })
}

/// How an apply ended.
#[derive(Debug)]
pub struct Finished {
    /// The receipt (not yet written).
    pub receipt: Receipt,
    /// What this run sent.
    pub stats: Stats,
    /// Changes settled in this run without a write (drift).
    pub settled: u64,
    /// True when this run finished an interrupted one.
    pub resumed: bool,
}

struct JournalSink<'a> {
    journal: &'a mut Journal,
    clock: &'a dyn Clock,
    plan_id: uuid::Uuid,
    outcomes: &'a mut BTreeMap<(ObjectId, ObjectId), ChangeResult>,
    progress: &'a mut dyn FnMut(&[ChangeResult]),
}

impl Sink for JournalSink<'_> {
    fn record(&mut self, written: &[Written]) -> Result<()> {
        let now = self.clock.now();
        for Written { result, request } in written {
            let key = (result.group_id.clone(), result.user_id.clone());
            if self.outcomes.contains_key(&key) {
                // Never two outcomes for one change: keep the first.
                continue;
            }
            let request = request.as_ref().map(|ids| WriteRecord::new(ids, now));
            self.journal
                .append(now, Event::ChangeOutcome { plan_id: self.plan_id, result: result.clone(), request })?;
            self.outcomes.insert(key, result.clone());
        }
        self.journal.sync()?;
        let results: Vec<ChangeResult> = written.iter().map(|w| w.result.clone()).collect();
        (self.progress)(&results);
        Ok(())
    }
}

/// What [`execute`] needs besides the plan and the gates' result.
pub struct RunInputs<'a> {
    /// The journal file.
    pub journal_path: &'a Path,
    /// The plan file (for the receipt).
    pub plan_path: &'a Path,
    /// SHA-256 of the plan file.
    pub plan_sha256: &'a str,
    /// Who applies.
    pub applier: Applier,
    /// Who writes to Entra ID (the Graph token's person or application), when known.
    pub entra_actor: Option<crate::identity::EntraActor>,
    /// The clock.
    pub clock: &'a dyn Clock,
    /// The executor's tunables.
    pub config: Config,
    /// Set to true to stop sending (Ctrl-C); the run then ends with the journal up to date.
    pub stop: Option<tokio::sync::watch::Receiver<bool>>,
    /// Called with the run's start time once its `apply-started` line is synced to the journal, before the
    /// first write: the ledger records the start there.
    pub on_started: Option<&'a (dyn Fn(DateTime<Utc>) -> Result<()> + Sync)>,
}

/// Sends the writes, journals every outcome and builds the receipt.
pub async fn execute<T: Transport>(
    transport: Arc<T>,
    plan: &Plan,
    prepared: &Prepared,
    run: RunInputs<'_>,
    progress: &mut dyn FnMut(&[ChangeResult]),
) -> Result<Finished> {
    let opened = Journal::open(run.journal_path, run.clock.now())?;
    let seen_seq = prepared.journal.as_ref().map_or(0, |c| c.seq);
    if opened.chain.seq != seen_seq {
        return Err(Error::Replay(format!(
            "{}: the journal changed while apply was waiting (another apply running?); nothing was sent. Run \
                 the command again",
            run.journal_path.display()
        )));
    }
    if let Some(torn) = &opened.chain.torn_tail {
        tracing::warn!(
            "{}: removed an incomplete last line ({} bytes at line {}), left by an interrupted run; it held no \
             complete record",
            run.journal_path.display(),
            torn.len,
            torn.line
        );
    }
    let mut journal = opened.journal;
    let resumed = prepared.resuming();
    let this_start = run.clock.now();
    journal.append(
        this_start,
        Event::ApplyStarted {
            plan_id: plan.plan_id,
            plan_sha256: run.plan_sha256.to_string(),
            tenant_id: Some(prepared.tenant_id.clone()),
            applier: run.applier.clone(),
            entra_actor: run.entra_actor.clone(),
            resume: resumed,
            pending: prepared.pending(),
        },
    )?;
    journal.sync()?;
    if let Some(on_started) = run.on_started {
        on_started(this_start)?;
    }
    let started_at = prepared.progress.first_started.unwrap_or(this_start);
    let mut outcomes = prepared.progress.outcomes.clone();
    let settled: Vec<ChangeResult> = prepared.works.iter().flat_map(|w| w.settled.iter().cloned()).collect();
    let stats = {
        let mut sink = JournalSink {
            journal: &mut journal,
            clock: run.clock,
            plan_id: plan.plan_id,
            outcomes: &mut outcomes,
            progress,
        };
        if !settled.is_empty() {
            let written: Vec<Written> = settled.iter().map(|r| Written { result: r.clone(), request: None }).collect();
            sink.record(&written)?;
        }
        executor::execute(transport, &prepared.works, &run.config, &mut sink, run.stop).await.map_err(|e| match e {
            ExecError::Sink(e) => e,
            ExecError::Unreachable(message) => Error::Service(format!(
                "Microsoft Graph did not answer usefully ({message}); every outcome so far is in {}. Run the same \
                 command again to finish the remaining changes",
                run.journal_path.display()
            )),
            ExecError::Interrupted => Error::Interrupted(format!(
                "interrupted; run the same command to resume (every outcome so far is in {})",
                run.journal_path.display()
            )),
        })?
    };
    let counts = OutcomeCounts::tally(outcomes.values().map(|r| &r.outcome));
    let status = receipt::status_of(&counts);
    let finished_at = run.clock.now();
    // Check the accounting before the finish line is written, so a gap never gets sealed.
    let mut receipt = Receipt::build(ReceiptInput {
        plan,
        plan_sha256: run.plan_sha256,
        plan_file: run.plan_path.display().to_string(),
        tenant_id: Some(prepared.tenant_id.clone()),
        applier: run.applier.clone(),
        entra_actor: run.entra_actor.clone(),
        started_at,
        finished_at,
        runs: prepared.progress.runs + 1,
        outcomes: &outcomes,
        journal: JournalAnchor { path: run.journal_path.display().to_string(), head: String::new(), seq: 0 },
    })
    .map_err(|e| Error::Internal(format!("{}: {e}", run.journal_path.display())))?;
    journal.append(finished_at, Event::ApplyFinished { plan_id: plan.plan_id, status, counts })?;
    journal.sync()?;
    receipt.renames = prepared.renames.clone();
    receipt.journal.head = journal.head().to_string();
    receipt.journal.seq = journal.seq();
    Ok(Finished { receipt, stats, settled: settled.len() as u64, resumed })
}

/// The receipt of a plan that finished in `chain` (its `apply-finished` line is there), rebuilt from the journal
/// alone. Used when a run was killed after it sealed the journal but before the receipt reached the disk.
/// `None` when the plan has not finished in this journal.
pub fn rebuild_receipt(
    plan: &Plan,
    plan_sha256: &str,
    plan_path: &Path,
    journal_path: &Path,
    chain: &Chain,
) -> Result<Option<Receipt>> {
    let progress = PlanProgress::of(chain, plan.plan_id).map_err(|e| journal::chain_error(journal_path, e))?;
    let Some((finished_at, _)) = progress.finished else { return Ok(None) };
    let mut anchor = None;
    let mut started = None;
    for (index, entry) in chain.entries.iter().enumerate() {
        match &entry.event {
            Event::ApplyStarted { plan_id, applier, tenant_id, entra_actor, .. } if *plan_id == plan.plan_id => {
                started = Some((applier.clone(), tenant_id.clone(), entra_actor.clone()));
            }
            Event::ApplyFinished { plan_id, .. } if *plan_id == plan.plan_id => {
                let head = chain.links.get(index).cloned().unwrap_or_default();
                anchor = Some(JournalAnchor { path: journal_path.display().to_string(), head, seq: entry.seq });
            }
            _ => {}
        }
    }
    let (Some(journal), Some((applier, tenant_id, entra_actor))) = (anchor, started) else { return Ok(None) };
    let receipt = Receipt::build(ReceiptInput {
        plan,
        plan_sha256,
        plan_file: plan_path.display().to_string(),
        tenant_id,
        applier,
        entra_actor,
        started_at: progress.first_started.unwrap_or(finished_at),
        finished_at,
        runs: progress.runs,
        outcomes: &progress.outcomes,
        journal,
    })
    .map_err(|e| Error::Internal(format!("{}: {e}", journal_path.display())))?;
    Ok(Some(receipt))
}
