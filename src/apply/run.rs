//! `apply` as a library operation, in the order the admin's checklist reads:
//!
//! ```text
//! offline checks (signature, signer, format, expiry, approvals, ledger, key) ─► lock ─► connect
//!   ─► gates 4–8 (directory reads)
//!   ─► review ─► confirm ─► execute (writes, journal) ─► receipt (signed when a key is given)
//! ```
//!
//! The library neither prints nor reads the terminal: the command line passes an [`ApplyUi`] that shows the
//! review, asks for consent, shows progress and says when to stop (Ctrl-C). The operation returns what
//! happened; the command line renders it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::backend::Backend;
use super::executor::{self, Estimate};
use super::graph::GraphBackend;
use super::journal::PlanProgress;
use super::once::Once;
use super::receipt::{Receipt, RECEIPT_NAMESPACE};
use super::session::{self, Finished, GateOptions, Prepared, RunInputs, SystemClock};
use super::{Applier, ChangeResult};
use crate::error::{Error, Result};
use crate::plan::Plan;
use crate::trust::{self, SigningKey, VerifiedPlan};

/// Everything one apply needs, with the flags, the environment and the config already merged.
#[derive(Debug, Clone)]
pub struct ApplyRequest {
    /// The signed plan file.
    pub plan: PathBuf,
    /// Its signature (`None`: beside the plan).
    pub signature: Option<PathBuf>,
    /// Whose signatures to trust.
    pub allowed_signers: PathBuf,
    /// How many approvals from signers other than the planner the plan needs.
    pub require_approvals: u32,
    /// The journal to append to.
    pub journal: PathBuf,
    /// The ledger folder.
    pub ledger: PathBuf,
    /// The key that signs the receipt, if any.
    pub key: Option<PathBuf>,
    /// Strictness and removal limits.
    pub gates: GateOptions,
    /// Stop after the review: nothing is sent and nothing is written.
    pub dry_run: bool,
    /// How many PATCHes go into one `$batch` (1–20).
    pub patches_per_batch: usize,
    /// The most `$batch` requests in flight at once.
    pub concurrency: usize,
    /// How long one `$batch` may go unanswered before its items are sent again.
    pub request_timeout: Duration,
    /// How to sign in to Microsoft Graph, and where it is.
    pub sign_in: crate::signin::SignInSettings,
    /// The time the command started, for expiry and key validity.
    pub now: DateTime<Utc>,
    /// The longest a plan may live (`max_plan_lifetime`).
    pub max_plan_lifetime: chrono::TimeDelta,
}

/// What the offline checks (gates 1–3, approvals, the receipt key) produced.
pub struct Checked {
    /// The verified plan.
    pub verified: VerifiedPlan,
    /// Where the receipt goes.
    pub receipt: PathBuf,
    /// The receipt's signing key, loaded.
    pub key: Option<SigningKey>,
    /// The ledger, after its gates.
    pub once: Once,
}

/// What the review shows: the plan, its signer, and what the gates found and a run would send.
pub struct Review<'a> {
    /// The verified plan.
    pub verified: &'a VerifiedPlan,
    /// The gates' result.
    pub prepared: &'a Prepared,
    /// The batching arithmetic.
    pub estimate: &'a Estimate,
    /// The journal file.
    pub journal: &'a Path,
    /// PATCHes per `$batch`, for the dry run's table.
    pub patches_per_batch: usize,
    /// The time the command started.
    pub now: DateTime<Utc>,
}

impl Review<'_> {
    /// The plan under review.
    pub fn plan(&self) -> &Plan {
        &self.verified.plan
    }
}

/// The parts of an apply that belong to the person at the keyboard.
pub trait ApplyUi {
    /// Something the person should know that is not part of the review (on stderr at a terminal).
    fn notice(&mut self, text: &str);
    /// The gates passed: show what will happen.
    fn review(&mut self, review: &Review<'_>);
    /// `--dry-run`: show what a run would send. The apply ends after this.
    fn dry_run(&mut self, review: &Review<'_>);
    /// Ask for consent; an error (e.g. [`Error::NotConfirmed`]) ends the apply with nothing sent.
    fn confirm(&mut self, review: &Review<'_>) -> Result<()>;
    /// Sending starts, for `pending` changes. Returns a signal that turns true when sending should stop.
    fn sending(&mut self, pending: u64) -> Option<tokio::sync::watch::Receiver<bool>>;
    /// Outcomes were journaled.
    fn progress(&mut self, results: &[ChangeResult]);
    /// Sending ended (done, stopped or failed).
    fn sent(&mut self);
}

/// How an apply ended.
#[derive(Debug)]
pub enum ApplyOutcome {
    /// `--dry-run`: nothing was sent or written.
    DryRun,
    /// The apply ran (or its receipt was rebuilt) and the receipt is written.
    Done(Box<Done>),
}

/// A finished apply whose receipt is on disk.
#[derive(Debug)]
pub struct Done {
    /// The receipt and what this run sent.
    pub finished: Finished,
    /// Where the receipt was written.
    pub receipt_path: PathBuf,
    /// True when the receipt was signed (its `.sig` is beside it).
    pub signed: bool,
    /// Why Graph refuses writes with 403, given the token in use (the missing permission or role).
    pub forbidden: Option<String>,
}

impl Done {
    /// [`Error::Partial`] when some changes failed (the receipt lists each), else `Ok`.
    pub fn check_complete(&self) -> Result<()> {
        let counts = self.finished.receipt.counts;
        if counts.failed > 0 {
            let receipt = &self.finished.receipt;
            let refused = receipt.failures().filter(|(_, c)| c.error.as_ref().is_some_and(|e| e.status == 403)).count();
            let why = match self.forbidden.as_deref().filter(|_| refused > 0) {
                Some(why) => format!(" Graph refused {refused} of them with 403: {why}."),
                None => String::new(),
            };
            return Err(Error::Partial(format!(
                "{} of {} changes failed; {} lists each with Graph's reason.{why} Fix the cause and make a new plan \
                 for what is left",
                counts.failed,
                counts.total(),
                self.receipt_path.display()
            )));
        }
        Ok(())
    }
}

/// Applies a plan through Microsoft Graph: the offline checks, then a Graph client, then [`run_with`].
pub fn apply(request: &ApplyRequest, ui: &mut dyn ApplyUi) -> Result<ApplyOutcome> {
    let checked = check(request)?;
    let runtime = crate::http::runtime()?;
    let backend = GraphBackend::connect(&request.sign_in)?;
    runtime.block_on(run_with(request, checked, Arc::new(backend), ui))
}

/// Gates 1–3 (signature and signer, format, expiry), the approvals and the receipt key: everything that needs
/// no network. Nothing is sent before these pass.
pub fn check(request: &ApplyRequest) -> Result<Checked> {
    // Gates 1 and 2: signature, signer, format (trust verifies the bytes before it parses them).
    let verified =
        trust::verify_plan_files(&request.plan, request.signature.as_deref(), &request.allowed_signers, request.now)?;
    // Believable times: not made in the future, not living longer than max_plan_lifetime.
    verified.check_times(&request.plan, request.now, request.max_plan_lifetime)?;
    // Gate 3: expiry. There is no override.
    verified.ensure_unexpired(&request.plan, request.now)?;
    // The two-person rule: N approvals from allowed signers other than the planner (offline, before any request).
    crate::approvals::require_for(
        &request.plan,
        &verified,
        &request.allowed_signers,
        request.require_approvals,
        request.now,
    )?;
    // The ledger: not finished anywhere, not cancelled, and a started plan only with its own journal.
    let journal = &request.journal;
    let progress = match super::journal::read(journal)? {
        Some(chain) => {
            PlanProgress::of(&chain, verified.plan.plan_id).map_err(|e| super::journal::chain_error(journal, e))?
        }
        None => PlanProgress::default(),
    };
    let receipt = crate::archive::receipt_path(&request.plan);
    // A receipt beside the plan counts only when it records this plan's SHA-256.
    super::receipt::read_own(&receipt, verified.plan.plan_id, &verified.sha256)?;
    // A journal that finished the plan but no receipt beside it: the run writes the receipt from the journal
    // and sends nothing, even though the ledger has the plan as finished.
    let rebuilding = progress.finished.is_some() && !receipt.exists();
    let allowed = crate::trust::AllowedSigners::load(&request.allowed_signers)?;
    let once = Once::check(&request.ledger, &verified.plan, &verified.sha256, &allowed, request.now, rebuilding)?;
    once.check_journal(&verified.plan, journal, &progress)?;
    let key = match &request.key {
        Some(path) => Some(SigningKey::load(path).map_err(|e| Error::input(&e.path, e.problem.to_string()))?),
        None => None,
    };
    Ok(Checked { verified, receipt, key, once })
}

/// Runs `apply` after the offline checks, against any backend (Graph, or a fake in tests).
pub async fn run_with<B: Backend>(
    request: &ApplyRequest,
    checked: Checked,
    backend: Arc<B>,
    ui: &mut dyn ApplyUi,
) -> Result<ApplyOutcome> {
    let plan = &checked.verified.plan;
    let sha256 = checked.verified.sha256.clone();
    if let Some(warning) = checked.once.warning() {
        ui.notice(&warning);
    }
    // A run killed after it sealed the journal but before the receipt was written: write the receipt now,
    // from the journal, and send nothing. A plan the journal has as finished is recorded in the ledger too.
    if let Some(chain) = super::journal::read(&request.journal)? {
        if let Some(receipt) = session::rebuild_receipt(plan, &sha256, &request.plan, &request.journal, &chain)? {
            if !request.dry_run {
                checked.once.record_finished(&receipt, &checked.receipt, &request.journal)?;
            }
            if !checked.receipt.exists() {
                ui.notice(&format!(
                    "plan {} had already finished (journal {}), but its receipt was missing; it was written from the \
                     journal. Nothing was sent",
                    plan.plan_id,
                    request.journal.display()
                ));
                let finished = Finished { receipt, stats: Default::default(), settled: 0, resumed: false };
                return finish(request, &checked, finished, None).map(|done| ApplyOutcome::Done(Box::new(done)));
            }
        }
    }
    // Gate 3e: one apply of a plan at a time (a dry run writes nothing, not even the lock).
    let lock = if request.dry_run { None } else { Some(checked.once.lock(plan, request.now)?) };
    if let Some(previous) = lock.as_ref().and_then(|l| l.taken_over.as_ref()) {
        ui.notice(&format!(
            "note: took over the lock of plan {} left by an apply that ended without releasing it ({}); that \
             process is gone. The journal says what it did; this run resumes from there",
            plan.plan_id,
            previous.describe()
        ));
    }
    // Gates 4–8.
    let prepared =
        session::prepare(backend.as_ref(), plan, &sha256, &request.journal, &checked.receipt, request.gates).await?;
    if let Some(warning) = backend.clock().and_then(|reading| reading.warning()) {
        ui.notice(&warning);
    }
    let estimate = executor::estimate(&prepared.works, request.patches_per_batch);
    let review = Review {
        verified: &checked.verified,
        prepared: &prepared,
        estimate: &estimate,
        journal: &request.journal,
        patches_per_batch: request.patches_per_batch,
        now: request.now,
    };
    ui.review(&review);
    if request.dry_run {
        ui.dry_run(&review);
        return Ok(ApplyOutcome::DryRun);
    }
    if prepared.pending() > 0 || !prepared.resuming() {
        ui.confirm(&review)?;
    }
    let stop = ui.sending(prepared.pending());
    let on_started =
        |at: DateTime<Utc>| checked.once.record_started(plan, &sha256, &request.plan, &request.journal, at);
    let run = RunInputs {
        journal_path: &request.journal,
        plan_path: &request.plan,
        plan_sha256: &sha256,
        applier: Applier::current(checked.key.as_ref()),
        entra_actor: backend.entra_actor(),
        clock: &SystemClock,
        config: executor::Config {
            retry: backend.retry_policy(),
            patches_per_batch: request.patches_per_batch,
            max_concurrency: request.concurrency,
            bind_base: backend.bind_base(),
            request_timeout: Some(request.request_timeout),
            ..executor::Config::default()
        },
        stop,
        on_started: Some(&on_started),
    };
    let finished = {
        let mut on_results = |results: &[ChangeResult]| ui.progress(results);
        session::execute(Arc::clone(&backend), plan, &prepared, run, &mut on_results).await
    };
    ui.sent();
    let done = finish(request, &checked, finished?, backend.explain_forbidden())
        .map(|done| ApplyOutcome::Done(Box::new(done)));
    drop(lock);
    done
}

/// Writes the receipt (and its signature), then marks the plan finished in the ledger.
fn finish(request: &ApplyRequest, checked: &Checked, finished: Finished, forbidden: Option<String>) -> Result<Done> {
    write_receipt(&checked.receipt, &finished.receipt, checked.key.as_ref())?;
    checked.once.record_finished(&finished.receipt, &checked.receipt, &request.journal)?;
    Ok(Done { finished, receipt_path: checked.receipt.clone(), signed: checked.key.is_some(), forbidden })
}

/// Writes a receipt, and with a key its SSHSIG signature beside it (both or neither). Returns the signature's
/// path when there is one.
pub fn write_receipt(path: &Path, receipt: &Receipt, key: Option<&SigningKey>) -> Result<Option<PathBuf>> {
    let bytes = receipt.encode();
    let sig_path = crate::archive::signature_path(path);
    if key.is_none() && sig_path.exists() {
        // A signed receipt (or its signature, left behind) is never replaced by an unsigned receipt.
        return Err(Error::SignedReceipt {
            path: path.to_path_buf(),
            message: format!(
                "{} is there: this receipt was signed, and writeback never replaces a signed receipt with an \
                 unsigned one. Run the command again with --key (the admin's writeback-receipt key)",
                sig_path.display()
            ),
        });
    }
    match key {
        Some(key) => {
            let sig = key
                .sign(RECEIPT_NAMESPACE, &bytes)
                .map_err(|e| Error::Internal(format!("cannot sign the receipt: {e}")))?;
            crate::atomic_write::write_together(&[(path, &bytes), (&sig_path, sig.as_bytes())])?;
            Ok(Some(sig_path))
        }
        None => {
            crate::atomic_write::write(path, &bytes)?;
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    //! `apply` from a signed plan on disk to the receipt and the ledger, against the session's in-memory tenant
    //! (its reads and its writes) and a recording stand-in for the person at the keyboard.

    use super::*;
    use crate::apply::session::tests::{plan, t0, Tenant};
    use crate::plan::Action;

    /// Remembers what the apply showed and asked; says yes unless told not to.
    #[derive(Default)]
    struct Person {
        refuse: bool,
        reviews: u32,
        dry_runs: u32,
        progressed: u64,
    }

    impl ApplyUi for Person {
        fn notice(&mut self, _: &str) {}
        fn review(&mut self, _: &Review<'_>) {
            self.reviews += 1;
        }
        fn dry_run(&mut self, _: &Review<'_>) {
            self.dry_runs += 1;
        }
        fn confirm(&mut self, _: &Review<'_>) -> Result<()> {
            if self.refuse {
                return Err(Error::NotConfirmed("not confirmed; nothing was sent".into()));
            }
            Ok(())
        }
        fn sending(&mut self, _: u64) -> Option<tokio::sync::watch::Receiver<bool>> {
            None
        }
        fn progress(&mut self, results: &[ChangeResult]) {
            self.progressed += results.len() as u64;
        }
        fn sent(&mut self) {}
    }

    /// A folder with a plan for the tenant (add 11 and 12, remove 2), signed by a key allowed to sign plans.
    fn signed(dir: &Path, dry_run: bool) -> ApplyRequest {
        let key = SigningKey::generate("planner@contoso.example").unwrap();
        let allowed = dir.join("allowed_signers");
        let line = format!("planner@contoso.example namespaces=\"writeback-plan\" {}\n", key.public_key_openssh());
        std::fs::write(&allowed, line).unwrap();
        let mut plan = plan(1..=10, &[11, 12], &[2]);
        plan.signer = "planner@contoso.example".into();
        let bytes = crate::plan::encode(&plan, crate::plan::PlanFormat::Json);
        let path = dir.join("plan.json");
        std::fs::write(&path, &bytes).unwrap();
        std::fs::write(crate::archive::signature_path(&path), key.sign(trust::PLAN_NAMESPACE, &bytes).unwrap())
            .unwrap();
        ApplyRequest {
            journal: crate::archive::journal_path(&path),
            plan: path,
            signature: None,
            allowed_signers: allowed,
            require_approvals: 0,
            ledger: dir.join("ledger"),
            key: None,
            gates: GateOptions::default(),
            dry_run,
            patches_per_batch: 20,
            concurrency: 1,
            request_timeout: Duration::from_secs(30),
            sign_in: Default::default(),
            now: t0(),
            max_plan_lifetime: chrono::TimeDelta::days(30),
        }
    }

    fn apply_with(request: &ApplyRequest, tenant: &Arc<Tenant>, person: &mut Person) -> Result<ApplyOutcome> {
        let checked = check(request)?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        runtime.block_on(run_with(request, checked, Arc::clone(tenant), person))
    }

    #[test]
    fn a_signed_plan_is_applied_once_with_its_receipt_and_ledger_record() {
        let dir = tempfile::tempdir().unwrap();
        let request = signed(dir.path(), false);
        let tenant = Tenant::with_members(1..=10);
        let mut person = Person::default();
        let ApplyOutcome::Done(done) = apply_with(&request, &tenant, &mut person).unwrap() else {
            panic!("not a dry run")
        };
        done.check_complete().unwrap();
        assert_eq!((person.reviews, person.progressed), (1, 3));
        assert_eq!(tenant.written(), vec![(Action::Add, 11), (Action::Add, 12), (Action::Remove, 2)]);
        assert!(done.receipt_path.exists() && !done.signed);
        let receipt = Receipt::decode(&std::fs::read(&done.receipt_path).unwrap()).unwrap();
        assert_eq!(receipt.counts.applied, 3);
        // The ledger has it as finished: the plan is refused before anything is read, wherever its file is.
        let again = apply_with(&request, &tenant, &mut Person::default());
        assert!(matches!(again, Err(Error::Replay(_))), "{again:?}");
        assert_eq!(tenant.written().len(), 3);
    }

    #[test]
    fn a_dry_run_reviews_and_then_sends_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let request = signed(dir.path(), true);
        let tenant = Tenant::with_members(1..=10);
        let mut person = Person::default();
        assert!(matches!(apply_with(&request, &tenant, &mut person), Ok(ApplyOutcome::DryRun)));
        assert_eq!((person.reviews, person.dry_runs), (1, 1));
        assert!(tenant.written().is_empty());
        assert!(!request.journal.exists() && !crate::archive::receipt_path(&request.plan).exists());
    }

    #[test]
    fn without_consent_nothing_is_sent_or_journaled() {
        let dir = tempfile::tempdir().unwrap();
        let request = signed(dir.path(), false);
        let tenant = Tenant::with_members(1..=10);
        let mut person = Person { refuse: true, ..Person::default() };
        let refused = apply_with(&request, &tenant, &mut person);
        assert!(matches!(refused, Err(Error::NotConfirmed(_))), "{refused:?}");
        assert!(tenant.written().is_empty());
        assert!(!request.journal.exists());
    }
}
