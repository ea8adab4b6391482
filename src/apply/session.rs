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

#[cfg(test)]
pub(crate) mod tests {
    //! The session against an in-memory tenant that is both the read side (the gates' [`DirectoryReads`]) and the
    //! write side (the executor's [`Transport`]), so what a run reads is what earlier writes left.

    use std::path::PathBuf;
    use std::sync::Mutex;

    use super::*;
    use crate::apply::executor::{BatchAnswer, ItemResponse, Method, Request, TransportError};
    use crate::apply::gates::GroupState;
    use crate::apply::{FinishStatus, GraphFailure, Outcome};
    use crate::directory::graph::DeletedItem;
    use crate::directory::{DirectoryUser, GroupMember, UserType};
    use crate::fixtures::{change, id};
    use crate::plan::{Action, Change, Counts, GroupPlan, Precondition};

    const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    const GROUP: u32 = 100;
    const SHA: &str = "ab";

    /// One group and users 1 to 99 (`u{n}@contoso.example`), with a log of what was read and written.
    #[derive(Default)]
    pub(crate) struct Tenant(Mutex<State>);

    #[derive(Default)]
    struct State {
        members: BTreeSet<u32>,
        /// Users whose add Graph refuses with 403.
        refused: BTreeSet<u32>,
        member_reads: u64,
        /// Every user written with success, in order (an add or a remove).
        written: Vec<(Action, u32)>,
    }

    fn number(id: &str) -> u32 {
        id.rsplit('-').next().and_then(|n| n.parse().ok()).expect("a fixture id")
    }

    fn upn(n: u32) -> String {
        format!("u{n}@contoso.example")
    }

    impl Tenant {
        pub(crate) fn with_members(members: impl IntoIterator<Item = u32>) -> Arc<Tenant> {
            let tenant = Tenant::default();
            tenant.state().members = members.into_iter().collect();
            Arc::new(tenant)
        }

        fn state(&self) -> std::sync::MutexGuard<'_, State> {
            self.0.lock().unwrap()
        }

        pub(crate) fn members(&self) -> BTreeSet<u32> {
            self.state().members.clone()
        }

        pub(crate) fn written(&self) -> Vec<(Action, u32)> {
            self.state().written.clone()
        }

        fn answer(&self, item: &Request) -> ItemResponse {
            let mut s = self.state();
            let fail = |status: u16, message: &str| ItemResponse {
                error: Some(GraphFailure {
                    status,
                    code: Some("Test".into()),
                    message: Some(message.into()),
                    request_id: None,
                }),
                ..ItemResponse::with_status(item.id(), status)
            };
            match item.method() {
                Method::Patch => {
                    let binds =
                        item.body().and_then(|b| b["members@odata.bind"].as_array()).cloned().unwrap_or_default();
                    let users: Vec<u32> = binds.iter().filter_map(|b| b.as_str()).map(number).collect();
                    if users.iter().any(|u| s.refused.contains(u)) {
                        return fail(403, "Insufficient privileges to complete the operation.");
                    }
                    if users.iter().any(|u| s.members.contains(u)) {
                        return fail(
                            400,
                            "One or more added object references already exist for the following modified \
                             properties: 'members'.",
                        );
                    }
                    for user in users {
                        s.members.insert(user);
                        s.written.push((Action::Add, user));
                    }
                    ItemResponse::with_status(item.id(), 204)
                }
                Method::Delete => {
                    let user = item.url().split('/').nth(4).map(number).expect("/groups/{g}/members/{u}/$ref");
                    if !s.members.remove(&user) {
                        return fail(404, "Resource does not exist");
                    }
                    s.written.push((Action::Remove, user));
                    ItemResponse::with_status(item.id(), 204)
                }
            }
        }
    }

    impl DirectoryReads for Tenant {
        async fn tenant_id(&self) -> Result<String> {
            Ok(TENANT.into())
        }

        async fn group(&self, group: &ObjectId) -> Result<Option<GroupState>> {
            Ok((*group == id(GROUP)).then(|| GroupState { display_name: Some("Staff".into()), not_manageable: None }))
        }

        async fn members(&self, _: &ObjectId) -> Result<Vec<GroupMember>> {
            let mut s = self.state();
            s.member_reads += 1;
            Ok(s.members
                .iter()
                .map(|n| GroupMember {
                    id: id(*n),
                    kind: MemberKind::User,
                    upn: Some(upn(*n)),
                    display_name: None,
                    mail: None,
                    source_line: None,
                })
                .collect())
        }

        async fn users_by_id(&self, ids: &[ObjectId]) -> Result<Vec<DirectoryUser>> {
            Ok(ids
                .iter()
                .map(|i| DirectoryUser {
                    id: i.clone(),
                    upn: upn(number(i.as_str())),
                    display_name: None,
                    mail: None,
                    user_type: UserType::Member,
                    account_enabled: Some(true),
                    proxy_addresses: vec![],
                })
                .collect())
        }

        async fn deleted_items(&self, ids: &[ObjectId]) -> Result<Vec<(ObjectId, DeletedItem)>> {
            Ok(ids.iter().map(|i| (i.clone(), DeletedItem::NotFound)).collect())
        }
    }

    impl Transport for Tenant {
        async fn send(&self, items: Vec<Request>) -> std::result::Result<BatchAnswer, TransportError> {
            let items = items.iter().map(|item| self.answer(item)).collect();
            Ok(BatchAnswer { items, client_request_id: "client-request".into(), request_id: Some("request".into()) })
        }
    }

    impl crate::apply::backend::Backend for Tenant {
        fn bind_base(&self) -> String {
            "https://graph.example/v1.0".into()
        }
    }

    /// A fixed clock.
    struct At(DateTime<Utc>);

    impl Clock for At {
        fn now(&self) -> DateTime<Utc> {
            self.0
        }
    }

    pub(crate) fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    /// A plan for the group as it was with `members`: add `adds`, remove `removes`.
    pub(crate) fn plan(members: impl IntoIterator<Item = u32>, adds: &[u32], removes: &[u32]) -> Plan {
        let mut changes: Vec<Change> = adds.iter().map(|n| change(Action::Add, *n)).collect();
        changes.extend(removes.iter().map(|n| change(Action::Remove, *n)));
        let members: Vec<ObjectId> = members.into_iter().map(id).collect();
        Plan {
            format: crate::plan::FORMAT_NAME.into(),
            format_version: crate::plan::FORMAT_VERSION.into(),
            plan_id: uuid::Uuid::from_u128(7),
            created_at: t0() - chrono::Duration::hours(1),
            expires_at: t0() + chrono::Duration::days(7),
            signer: "planner@contoso.example".into(),
            tool_version: "test".into(),
            tenant_id: Some(TENANT.into()),
            entra_actor: None,
            groups: vec![GroupPlan {
                group_id: id(GROUP),
                display_name: Some("Staff".into()),
                options: Default::default(),
                inputs: vec![],
                precondition: Precondition::from_members(&members),
                counts: Counts::tally(&changes, &[]),
                changes,
                not_acted_on: vec![],
            }],
        }
    }

    /// A folder for the plan's journal and receipt.
    struct Files {
        _dir: tempfile::TempDir,
        plan: PathBuf,
    }

    impl Files {
        fn new() -> Files {
            let dir = tempfile::tempdir().unwrap();
            let plan = dir.path().join("plan.json");
            Files { _dir: dir, plan }
        }

        fn journal(&self) -> PathBuf {
            crate::archive::journal_path(&self.plan)
        }

        fn progress(&self, plan: &Plan) -> PlanProgress {
            let chain = journal::read(&self.journal()).unwrap().expect("a journal");
            PlanProgress::of(&chain, plan.plan_id).unwrap()
        }

        fn prepare(&self, tenant: &Tenant, plan: &Plan) -> Result<Prepared> {
            let receipt = crate::archive::receipt_path(&self.plan);
            runtime().block_on(prepare(tenant, plan, SHA, &self.journal(), &receipt, GateOptions::default()))
        }

        /// Runs the writes; `progress` sees each batch's outcomes and may send `true` on `stop`.
        fn execute(
            &self,
            tenant: &Arc<Tenant>,
            plan: &Plan,
            prepared: &Prepared,
            stop: Option<tokio::sync::watch::Receiver<bool>>,
            progress: &mut dyn FnMut(&[ChangeResult]),
        ) -> Result<Finished> {
            let journal = self.journal();
            let clock = At(t0());
            let run = RunInputs {
                journal_path: &journal,
                plan_path: &self.plan,
                plan_sha256: SHA,
                applier: Applier {
                    os_user: Some("admin".into()),
                    key_principal: None,
                    key_fingerprint: None,
                    tool_version: "test".into(),
                },
                entra_actor: None,
                clock: &clock,
                config: Config {
                    patches_per_batch: 1,
                    max_concurrency: 1,
                    bind_base: "https://graph.example/v1.0".into(),
                    ..Config::default()
                },
                stop,
                on_started: None,
            };
            runtime().block_on(execute(Arc::clone(tenant), plan, prepared, run, progress))
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap()
    }

    #[test]
    fn a_run_writes_each_change_once_journals_it_and_builds_the_receipt() {
        let tenant = Tenant::with_members(1..=10);
        let plan = plan(1..=10, &[11, 12], &[2]);
        let files = Files::new();
        let prepared = files.prepare(&tenant, &plan).unwrap();
        assert_eq!((prepared.pending(), prepared.resuming()), (3, false));
        assert!(tenant.written().is_empty(), "the gates only read");
        let finished = files.execute(&tenant, &plan, &prepared, None, &mut |_| {}).unwrap();
        assert_eq!(tenant.members(), [1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12].into());
        assert_eq!(tenant.written(), vec![(Action::Add, 11), (Action::Add, 12), (Action::Remove, 2)]);
        let receipt = &finished.receipt;
        assert_eq!((receipt.status, receipt.counts.applied, receipt.counts.total()), (FinishStatus::Complete, 3, 3));
        assert_eq!((receipt.runs, finished.settled, finished.resumed), (1, 0, false));
        let progress = files.progress(&plan);
        assert_eq!(progress.outcomes.len(), 3);
        assert!(progress.finished.is_some());
        let chain = journal::read(&files.journal()).unwrap().unwrap();
        assert_eq!((receipt.journal.seq, &receipt.journal.head), (chain.seq, &chain.head));
    }

    #[test]
    fn a_finished_plan_is_refused_as_a_replay_before_the_members_are_read() {
        let tenant = Tenant::with_members(1..=10);
        let plan = plan(1..=10, &[11], &[]);
        let files = Files::new();
        let prepared = files.prepare(&tenant, &plan).unwrap();
        files.execute(&tenant, &plan, &prepared, None, &mut |_| {}).unwrap();
        let reads = tenant.state().member_reads;
        // Someone takes user 11 out again: the plan must not be applied a second time all the same.
        tenant.state().members.remove(&11);
        let again = files.prepare(&tenant, &plan);
        assert!(matches!(again, Err(Error::Replay(_))), "{again:?}");
        assert_eq!(tenant.state().member_reads, reads);
        assert_eq!(tenant.written().len(), 1);
    }

    #[test]
    fn drift_since_planning_is_settled_without_a_write() {
        // User 11 joined and user 2 left since planning, as the plan wanted.
        let tenant = Tenant::with_members((1..=11).filter(|n| *n != 2));
        let plan = plan(1..=10, &[11, 12], &[2]);
        let files = Files::new();
        let prepared = files.prepare(&tenant, &plan).unwrap();
        let work = &prepared.works[0];
        assert_eq!((work.adds.as_slice(), work.removes.len(), work.settled.len()), ([id(12)].as_slice(), 0, 2));
        let finished = files.execute(&tenant, &plan, &prepared, None, &mut |_| {}).unwrap();
        assert_eq!(tenant.written(), vec![(Action::Add, 12)]);
        assert_eq!(finished.settled, 2);
        let c = finished.receipt.counts;
        assert_eq!((c.applied, c.already_member, c.already_absent, c.failed), (1, 1, 1, 0));
        assert_eq!(files.progress(&plan).outcomes.len(), 3);
    }

    #[test]
    fn another_tenant_is_refused_before_any_member_read_or_write() {
        let tenant = Tenant::with_members(1..=10);
        let mut plan = plan(1..=10, &[11], &[]);
        plan.tenant_id = Some("00000000-0000-0000-0000-00000000beef".into());
        let files = Files::new();
        let refused = files.prepare(&tenant, &plan);
        assert!(matches!(refused, Err(Error::TenantMismatch(_))), "{refused:?}");
        assert_eq!(tenant.state().member_reads, 0);
        assert!(tenant.written().is_empty());
        assert!(!files.journal().exists(), "nothing is journaled before the gates pass");
    }

    #[test]
    fn an_interrupted_run_is_finished_by_the_next_without_writing_anything_twice() {
        let tenant = Tenant::with_members(1..=10);
        // 40 adds: two PATCHes of 20, one per $batch; Ctrl-C after the first batch's outcomes are journaled.
        let adds: Vec<u32> = (11..=50).collect();
        let plan = plan(1..=10, &adds, &[]);
        let files = Files::new();
        let prepared = files.prepare(&tenant, &plan).unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let interrupted = files.execute(&tenant, &plan, &prepared, Some(stopped), &mut |_| {
            let _ = stop.send(true);
        });
        assert!(matches!(interrupted, Err(Error::Interrupted(_))), "{interrupted:?}");
        assert_eq!(tenant.written().len(), 20);
        let progress = files.progress(&plan);
        assert_eq!((progress.outcomes.len(), progress.runs, progress.finished.is_some()), (20, 1, false));

        let resumed = files.prepare(&tenant, &plan).unwrap();
        assert_eq!((resumed.pending(), resumed.resuming()), (20, true));
        let finished = files.execute(&tenant, &plan, &resumed, None, &mut |_| {}).unwrap();
        assert!(finished.resumed);
        assert_eq!((finished.receipt.runs, finished.receipt.counts.applied), (2, 40));
        let written = tenant.written();
        let once: BTreeSet<_> = written.iter().collect();
        assert_eq!((written.len(), once.len()), (40, 40), "every user written once");
    }

    #[test]
    fn a_journal_that_changed_after_the_gates_is_refused_and_nothing_is_sent() {
        let tenant = Tenant::with_members(1..=10);
        let plan = plan(1..=10, &[11], &[]);
        let files = Files::new();
        let prepared = files.prepare(&tenant, &plan).unwrap();
        // Another apply writes to the journal between the gates and the writes.
        let mut other = Journal::open(&files.journal(), t0()).unwrap().journal;
        let event = Event::ApplyStarted {
            plan_id: uuid::Uuid::from_u128(8),
            plan_sha256: "cd".into(),
            tenant_id: Some(TENANT.into()),
            applier: Applier { os_user: None, key_principal: None, key_fingerprint: None, tool_version: "x".into() },
            entra_actor: None,
            resume: false,
            pending: 1,
        };
        other.append(t0(), event).unwrap();
        other.sync().unwrap();
        let refused = files.execute(&tenant, &plan, &prepared, None, &mut |_| {});
        assert!(matches!(refused, Err(Error::Replay(_))), "{refused:?}");
        assert!(tenant.written().is_empty());
    }

    #[test]
    fn a_refused_write_is_a_failed_outcome_in_a_partial_receipt() {
        let tenant = Tenant::with_members(1..=10);
        tenant.state().refused.insert(12);
        let plan = plan(1..=10, &[11, 12], &[2]);
        let files = Files::new();
        let prepared = files.prepare(&tenant, &plan).unwrap();
        let finished = files.execute(&tenant, &plan, &prepared, None, &mut |_| {}).unwrap();
        let receipt = &finished.receipt;
        assert_eq!(receipt.status, FinishStatus::Partial);
        assert_eq!(receipt.counts.total(), 3, "every change has one outcome");
        let failed: Vec<_> = receipt.failures().map(|(_, c)| (c.user_id.clone(), c.outcome)).collect();
        assert!(failed.contains(&(id(12), Outcome::Failed)), "{failed:?}");
        assert!(!tenant.members().contains(&12));
        assert!(tenant.members().contains(&11) || failed.contains(&(id(11), Outcome::Failed)));
        assert!(!tenant.members().contains(&2));
    }
}
