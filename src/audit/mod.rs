//! Auditing: does an archive of plans, approvals, receipts and journals add up, and (in [`effect`]) did the
//! groups end up where a plan said.
//!
//! [`audit`] is pure: it gets every file's path and bytes and an allowed_signers list, and returns one row per plan
//! and a list of findings. A finding is one thing wrong, with the file (and line or `seq`) where it is. The files
//! are recognised by name:
//!
//! | name | what |
//! |---|---|
//! | `X.json`, `X.csv` that decode as plans (or that have a `X.sig`) | plans, signed in `X.sig` (`writeback-plan`) |
//! | `X.approval-LABEL.sig` | approvals of plan `X` (`writeback-approval`) |
//! | `*.receipt.json` (or any JSON whose `format` is `writeback-receipt`) | receipts, signed in `.sig` (`writeback-receipt`) |
//! | `*.jsonl` | apply journals |
//!
//! Other files are ignored.

pub mod check;
pub mod effect;
pub mod folder;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::apply::journal::{self, Chain, Event, PlanProgress};
use crate::apply::receipt::{Receipt, ReceiptMode};
use crate::apply::OutcomeCounts;
use crate::archive::{APPROVAL_INFIX, RECEIPT_SUFFIX, SIGNATURE_SUFFIX};
use crate::identity::EntraActor;
use crate::plan::{self, Plan};
use crate::trust::{self, AllowedSigners, VerifyError, APPROVAL_NAMESPACE, RECEIPT_NAMESPACE};

/// One file of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveFile {
    /// The path, as shown in findings (relative to the archive folder).
    pub path: String,
    /// The file's bytes.
    pub bytes: Vec<u8>,
}

/// Something wrong in the archive, and where.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Finding {
    /// The file.
    pub file: String,
    /// The line (1-based), when the finding is about one line.
    pub line: Option<u64>,
    /// The journal `seq`, for journal lines.
    pub seq: Option<u64>,
    /// What is wrong.
    pub message: String,
}

impl Finding {
    fn at(file: &str, message: impl Into<String>) -> Finding {
        Finding { file: file.to_string(), line: None, seq: None, message: message.into() }
    }

    fn line(file: &str, line: u64, message: impl Into<String>) -> Finding {
        Finding { file: file.to_string(), line: Some(line), seq: None, message: message.into() }
    }

    /// A journal line: `seq` N is line N + 1 (the header is line 1).
    fn seq(file: &str, seq: u64, message: impl Into<String>) -> Finding {
        Finding { file: file.to_string(), line: Some(seq + 1), seq: Some(seq), message: message.into() }
    }

    /// Where, for people: `file`, `file, line 7` or `file, line 7 (seq 6)`.
    pub fn location(&self) -> String {
        match (self.line, self.seq) {
            (Some(line), Some(seq)) => format!("{}, line {line} (seq {seq})", self.file),
            (Some(line), None) => format!("{}, line {line}", self.file),
            _ => self.file.clone(),
        }
    }
}

/// A broken journal: its line (and `seq`, for a line after the header) and what broke, said once.
fn chain_finding(path: &str, e: journal::ChainError) -> Finding {
    let message = if e.message.starts_with("the chain is broken") {
        format!("the journal {}", e.message.trim_start_matches("the "))
    } else {
        format!("the journal chain is broken: {}", e.message)
    };
    match e.line {
        line @ 2.. => Finding::seq(path, line - 1, message),
        line => Finding::line(path, line, message),
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.location(), self.message)
    }
}

/// One plan of the archive, with who approved and applied it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanRow {
    /// The plan file.
    pub plan_file: String,
    /// The plan id.
    pub plan_id: Uuid,
    /// SHA-256 (hex) of the plan file.
    pub sha256: String,
    /// The signer: the verified principal, or the plan's claim followed by `(not verified)`.
    pub signer: String,
    /// True when the plan's signature and signer checked out.
    pub signature_valid: bool,
    /// Who read Graph for the plan, in Entra ID (the plan's `entra_actor`), beside the SSH signer.
    pub signer_entra: Option<EntraActor>,
    /// When the plan was made.
    pub created_at: DateTime<Utc>,
    /// The principals of the valid approvals.
    pub approvers: Vec<String>,
    /// The receipt, when there is one.
    pub receipt_file: Option<String>,
    /// `apply` or `manual-verified`.
    pub mode: Option<String>,
    /// Who applied it: the receipt signer's principal, else the receipt's operating-system user with
    /// `(unsigned)`.
    pub applied_by: Option<String>,
    /// Who wrote to Entra ID for the apply (the receipt's `entra_actor`), beside the receipt's signer.
    pub applied_by_entra: Option<EntraActor>,
    /// When the apply finished (for a manual-verified receipt: when `check` found it in effect).
    pub applied_at: Option<DateTime<Utc>>,
    /// Changes applied.
    pub applied: Option<u64>,
    /// Changes that failed.
    pub failed: Option<u64>,
    /// Changes that needed no write (already a member, already absent).
    pub skipped: Option<u64>,
}

/// The result of an audit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AuditReport {
    /// One row per plan, oldest first.
    pub plans: Vec<PlanRow>,
    /// Everything wrong, by file and line.
    pub findings: Vec<Finding>,
    /// How many files of each kind were read.
    pub files: FileCounts,
}

/// How many files of each kind the audit read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FileCounts {
    /// Plans.
    pub plans: u64,
    /// Plan signatures, approval signatures and receipt signatures.
    pub signatures: u64,
    /// Approvals (also counted in `signatures`).
    pub approvals: u64,
    /// Receipts.
    pub receipts: u64,
    /// Journals.
    pub journals: u64,
}

struct PlanFile<'a> {
    path: &'a str,
    sha256: String,
    plan: Option<Plan>,
    row: Option<PlanRow>,
}

struct JournalFile<'a> {
    path: &'a str,
    chain: Chain,
}

struct ReceiptFile<'a> {
    path: &'a str,
    receipt: Receipt,
}

fn base_name(path: &str) -> &str {
    path.rsplit(['/', '\\']).next().unwrap_or(path)
}

fn counts_text(c: &OutcomeCounts) -> String {
    format!(
        "applied {}, already member {}, already absent {}, failed {}",
        c.applied, c.already_member, c.already_absent, c.failed
    )
}

/// When each plan was applied, by the SHA-256 its receipt records, for the receipts whose signature checks out
/// (at the receipt's own `finished_at`, when the admin signed it): the admin's signature vouches for the time.
/// The receipt's `started_at` is when apply checked the plan's signer. With several, the earliest counts.
fn signed_receipt_times(
    by_path: &BTreeMap<&str, &[u8]>,
    receipt_paths: &BTreeSet<&str>,
    allowed: &AllowedSigners,
) -> BTreeMap<String, DateTime<Utc>> {
    let mut times: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
    for &path in receipt_paths {
        let (Some(&bytes), Some(&sig)) = (by_path.get(path), by_path.get(format!("{path}{SIGNATURE_SUFFIX}").as_str()))
        else {
            continue;
        };
        let Ok(receipt) = Receipt::decode(bytes) else { continue };
        if trust::verify_detached(bytes, sig, RECEIPT_NAMESPACE, allowed, None, receipt.finished_at).is_err() {
            continue;
        }
        let at = times.entry(receipt.plan_sha256.to_ascii_lowercase()).or_insert(receipt.started_at);
        *at = (*at).min(receipt.started_at);
    }
    times
}

/// Audits an archive. A plan and its approvals are judged at the time its signed receipt says it was applied,
/// else at `now`; `now` also decides whether plans are reported as expired (which is not a finding).
pub fn audit(files: &[ArchiveFile], allowed: &AllowedSigners, now: DateTime<Utc>) -> AuditReport {
    let mut report = AuditReport::default();
    let mut findings = Vec::new();
    let by_path: BTreeMap<&str, &[u8]> = files.iter().map(|f| (f.path.as_str(), f.bytes.as_slice())).collect();

    // 1. Sort the files into kinds.
    let mut plan_paths: BTreeSet<&str> = BTreeSet::new();
    let mut receipt_paths: BTreeSet<&str> = BTreeSet::new();
    let mut journal_paths: BTreeSet<&str> = BTreeSet::new();
    let mut approvals: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (&path, &bytes) in &by_path {
        if path.ends_with(SIGNATURE_SUFFIX) {
            continue;
        } else if path.ends_with(".jsonl") {
            journal_paths.insert(path);
        } else if path.ends_with(RECEIPT_SUFFIX) {
            receipt_paths.insert(path);
        } else if path.ends_with(".json") || path.ends_with(".csv") {
            let signed = by_path.contains_key(format!("{path}.sig").as_str());
            if plan::decode(bytes).is_ok() || (signed && Receipt::decode(bytes).is_err()) {
                plan_paths.insert(path);
            } else if path.ends_with(".json") && Receipt::decode(bytes).is_ok() {
                receipt_paths.insert(path);
            }
        }
    }
    for &path in by_path.keys() {
        let Some(subject) = path.strip_suffix(SIGNATURE_SUFFIX) else { continue };
        report.files.signatures += 1;
        if let Some(at) = subject.rfind(APPROVAL_INFIX) {
            let plan_path = &subject[..at];
            if by_path.contains_key(plan_path) {
                plan_paths.insert(plan_path);
                approvals.entry(plan_path).or_default().push(path);
                report.files.approvals += 1;
                continue;
            }
            if !by_path.contains_key(subject) {
                findings.push(Finding::at(path, format!("an approval of {plan_path}, which is not in the archive")));
                continue;
            }
        }
        if !by_path.contains_key(subject) {
            findings.push(Finding::at(path, format!("a signature of {subject}, which is not in the archive")));
        } else if !plan_paths.contains(subject) && !receipt_paths.contains(subject) {
            // A signature over something that is neither a plan nor a receipt: judge the file as a plan.
            plan_paths.insert(subject);
        }
    }

    // 2. Plans, their signatures and approvals: each judged at the time its signed receipt says it was applied,
    // else now; never at the plan's own created_at, which its signer writes.
    let applied_at = signed_receipt_times(&by_path, &receipt_paths, allowed);
    let mut plans: Vec<PlanFile<'_>> = Vec::new();
    for &path in &plan_paths {
        let Some(&bytes) = by_path.get(path) else { continue };
        report.files.plans += 1;
        let sha256 = plan::precondition::sha256_hex(bytes);
        let (at, when) = match applied_at.get(sha256.as_str()) {
            Some(at) => {
                (*at, format!("at {}, when its signed receipt says it was applied", plan::timestamp::format(at)))
            }
            None => (now, "now (it has no signed receipt)".to_string()),
        };
        let decoded = plan::decode(bytes);
        let sig_path = format!("{path}.sig");
        let verified = match by_path.get(sig_path.as_str()) {
            None => {
                findings.push(Finding::at(path, format!("the plan is not signed: {sig_path} is missing")));
                None
            }
            Some(sig) => match trust::verify_plan(bytes, sig, allowed, at) {
                Ok(v) => Some(v),
                Err(e) => {
                    findings.push(Finding::at(
                        path,
                        format!("the plan's signature ({sig_path}) does not check out {when}: {e}"),
                    ));
                    None
                }
            },
        };
        let plan = verified.as_ref().map(|v| v.plan.clone()).or_else(|| decoded.as_ref().ok().cloned());
        if plan.is_none() {
            if let (Err(e), Some(_)) = (&decoded, &verified) {
                findings.push(Finding::at(path, format!("not a valid plan: {e}")));
            }
        }
        let mut approvers: Vec<String> = Vec::new();
        for &approval in approvals.get(path).map(Vec::as_slice).unwrap_or(&[]) {
            let Some(&sig) = by_path.get(approval) else { continue };
            match trust::verify_detached(bytes, sig, APPROVAL_NAMESPACE, allowed, None, at) {
                Err(VerifyError::BadSignature(trust::SigError::Mismatch)) => findings.push(Finding::at(
                    approval,
                    format!("the approval does not match the bytes of {path} (it approves another file or version)"),
                )),
                Err(e) => findings.push(Finding::at(approval, format!("the approval does not check out: {e}"))),
                Ok(a) => {
                    // Two people means two people: the rule `apply` uses (see crate::approvals).
                    let mut names = vec![a.principal.clone()];
                    names.extend(
                        trust::SshSignature::parse(sig)
                            .map(|s| allowed.principals_of(s.public_key()))
                            .unwrap_or_default(),
                    );
                    let signer = verified.as_ref().map(crate::approvals::PlanSigner::of);
                    let own = signer.as_ref().and_then(|signer| {
                        if signer.fingerprint == a.fingerprint {
                            Some(format!("made with the plan's own key ({})", a.fingerprint))
                        } else {
                            crate::approvals::same_person(signer, &names).map(|(theirs, planners)| {
                                format!(
                                    "its key is listed as '{theirs}', a name of the plan's signer ('{planners}' is listed \
                                     for the plan's key)"
                                )
                            })
                        }
                    });
                    if let Some(why) = own {
                        findings.push(Finding::at(
                            approval,
                            format!("approved by the plan's own signer ({}): {why}; it does not count", a.principal),
                        ));
                    } else if !approvers.contains(&a.principal) {
                        approvers.push(a.principal);
                    }
                }
            }
        }
        let row = plan.as_ref().map(|p| PlanRow {
            plan_file: path.to_string(),
            plan_id: p.plan_id,
            sha256: sha256.clone(),
            signer: match &verified {
                Some(v) => v.principal.clone(),
                None => format!("{} (not verified)", p.signer),
            },
            signature_valid: verified.is_some(),
            signer_entra: p.entra_actor.clone(),
            created_at: p.created_at,
            approvers,
            receipt_file: None,
            mode: None,
            applied_by: None,
            applied_by_entra: None,
            applied_at: None,
            applied: None,
            failed: None,
            skipped: None,
        });
        if let Some(finding) =
            plan.as_ref().and_then(|p| other_tenant("plan", p.tenant_id.as_deref(), p.entra_actor.as_ref()))
        {
            findings.push(Finding::at(path, finding));
        }
        plans.push(PlanFile { path, sha256, plan, row });
    }

    // 3. Journals.
    let mut journals: Vec<JournalFile<'_>> = Vec::new();
    for &path in &journal_paths {
        let Some(&bytes) = by_path.get(path) else { continue };
        report.files.journals += 1;
        match journal::verify_chain(bytes) {
            Err(e) => findings.push(chain_finding(path, e)),
            Ok(chain) => {
                if let Some(torn) = &chain.torn_tail {
                    findings.push(Finding::line(
                        path,
                        torn.line,
                        "an incomplete last line (a crash while writing); it is not part of the chain",
                    ));
                }
                journals.push(JournalFile { path, chain });
            }
        }
    }
    // Every plan in every journal: progress, finish counts, the plan's presence.
    let mut finishes: BTreeMap<Uuid, Vec<(String, u64)>> = BTreeMap::new();
    for j in &journals {
        let mut ids: Vec<Uuid> = Vec::new();
        for e in &j.chain.entries {
            if !ids.contains(&e.event.plan_id()) {
                ids.push(e.event.plan_id());
            }
        }
        for id in ids {
            let progress = match PlanProgress::of(&j.chain, id) {
                Ok(p) => p,
                Err(e) => {
                    findings.push(Finding::line(j.path, e.line, e.message));
                    continue;
                }
            };
            let first_line = j.chain.entries.iter().position(|e| e.event.plan_id() == id).unwrap_or(0) as u64 + 1;
            match plans.iter().find(|p| p.plan.as_ref().is_some_and(|p| p.plan_id == id)) {
                None => findings.push(Finding::seq(
                    j.path,
                    first_line,
                    format!("the journal records an apply of plan {id}, which is not in the archive"),
                )),
                Some(p) => {
                    if progress.plan_sha256.as_deref().is_some_and(|s| s != p.sha256) {
                        findings.push(Finding::seq(
                            j.path,
                            first_line,
                            format!("plan {id} was applied from a file whose SHA-256 differs from {}", p.path),
                        ));
                    }
                }
            }
            let tally = OutcomeCounts::tally(progress.outcomes.values().map(|r| &r.outcome));
            let mut finished_here = false;
            for e in &j.chain.entries {
                if let Event::ApplyFinished { plan_id, counts, .. } = &e.event {
                    if *plan_id != id {
                        continue;
                    }
                    finished_here = true;
                    finishes.entry(id).or_default().push((j.path.to_string(), e.seq));
                    if *counts != tally {
                        findings.push(Finding::seq(
                            j.path,
                            e.seq,
                            format!(
                                "apply-finished of plan {id} counts {} but the journal's outcomes are {}",
                                counts_text(counts),
                                counts_text(&tally)
                            ),
                        ));
                    }
                }
            }
            if !finished_here && progress.runs > 0 {
                findings.push(Finding::seq(
                    j.path,
                    first_line,
                    format!("the apply of plan {id} started but never finished (no apply-finished); resume it with writeback apply"),
                ));
            }
        }
    }
    for (id, list) in &finishes {
        let Some((first, first_seq)) = list.first() else { continue };
        for (path, seq) in list.iter().skip(1) {
            findings.push(Finding::seq(
                path,
                *seq,
                format!("plan {id} was applied twice: it finished already at {first} seq {first_seq}"),
            ));
        }
    }

    // 4. Receipts.
    let mut receipts: Vec<ReceiptFile<'_>> = Vec::new();
    for &path in &receipt_paths {
        let Some(&bytes) = by_path.get(path) else { continue };
        report.files.receipts += 1;
        let receipt = match Receipt::decode(bytes) {
            Ok(r) => r,
            Err(e) => {
                findings.push(Finding::at(path, format!("not a readable receipt: {e}")));
                continue;
            }
        };
        let sig_path = format!("{path}.sig");
        let signer = match by_path.get(sig_path.as_str()) {
            None => {
                findings.push(Finding::at(path, format!("the receipt is not signed: {sig_path} is missing")));
                None
            }
            Some(sig) => {
                match trust::verify_detached(bytes, sig, RECEIPT_NAMESPACE, allowed, None, receipt.finished_at) {
                    Ok(v) => {
                        if receipt.applier.key_fingerprint.as_deref().is_some_and(|f| f != v.fingerprint) {
                            findings.push(Finding::at(
                                path,
                                format!(
                                    "the receipt names key {} as the applier's but is signed with {}",
                                    receipt.applier.key_fingerprint.as_deref().unwrap_or_default(),
                                    v.fingerprint
                                ),
                            ));
                        }
                        Some(v.principal)
                    }
                    Err(e) => {
                        findings.push(Finding::at(
                            path,
                            format!("the receipt's signature ({sig_path}) does not check out: {e}"),
                        ));
                        None
                    }
                }
            }
        };
        check_receipt(path, &receipt, &plans, &journals, &mut findings);
        if let Some(finding) = other_tenant("receipt", receipt.tenant_id.as_deref(), receipt.entra_actor.as_ref()) {
            findings.push(Finding::at(path, finding));
        }
        if let Some(p) = plans.iter_mut().find(|p| p.sha256 == receipt.plan_sha256) {
            if let Some(row) = p.row.as_mut().filter(|r| r.receipt_file.is_none()) {
                row.receipt_file = Some(path.to_string());
                row.mode = Some(receipt.mode.as_str().to_string());
                row.applied_by = Some(signer.clone().unwrap_or_else(|| {
                    format!("{} (unsigned)", receipt.applier.os_user.clone().unwrap_or_else(|| "unknown".into()))
                }));
                row.applied_by_entra = receipt.entra_actor.clone();
                row.applied_at = Some(receipt.finished_at);
                row.applied = Some(receipt.counts.applied);
                row.failed = Some(receipt.counts.failed);
                row.skipped = Some(receipt.counts.already_member + receipt.counts.already_absent);
            }
        }
        receipts.push(ReceiptFile { path, receipt });
    }
    // No plan applied twice; every finished apply has its receipt.
    let mut by_plan: BTreeMap<Uuid, Vec<&str>> = BTreeMap::new();
    for r in &receipts {
        by_plan.entry(r.receipt.plan_id).or_default().push(r.path);
    }
    for (id, paths) in &by_plan {
        let Some(first) = paths.first() else { continue };
        for path in paths.iter().skip(1) {
            findings.push(Finding::at(path, format!("plan {id} has another receipt, {first}: a plan is applied once")));
        }
    }
    for (id, list) in &finishes {
        if !by_plan.contains_key(id) {
            if let Some((path, seq)) = list.first() {
                findings.push(Finding::seq(
                    path,
                    *seq,
                    format!("plan {id} finished applying here, but the archive holds no receipt for it"),
                ));
            }
        }
    }

    report.plans = plans.into_iter().filter_map(|p| p.row).collect();
    report.plans.sort_by(|a, b| (a.created_at, &a.plan_file).cmp(&(b.created_at, &b.plan_file)));
    findings.sort();
    findings.dedup();
    report.findings = findings;
    report
}

/// A plan's or receipt's tenant that is not its Entra actor's: the token that read or wrote was issued in
/// another tenant than the one the file names.
fn other_tenant(what: &str, tenant: Option<&str>, actor: Option<&EntraActor>) -> Option<String> {
    let actor = actor.filter(|a| a.other_tenant_than(tenant))?;
    Some(format!(
        "the {what} names tenant {}, but its Entra actor ({}) signed in to tenant {}",
        tenant.unwrap_or_default(),
        actor.label(),
        actor.tenant_id.as_deref().unwrap_or_default()
    ))
}

/// A receipt against its plan and journal.
fn check_receipt(
    path: &str,
    receipt: &Receipt,
    plans: &[PlanFile<'_>],
    journals: &[JournalFile<'_>],
    findings: &mut Vec<Finding>,
) {
    // Its own lists agree with its counts.
    let listed = OutcomeCounts::tally(receipt.groups.iter().flat_map(|g| g.changes.iter().map(|c| &c.outcome)));
    if listed != receipt.counts {
        findings.push(Finding::at(
            path,
            format!(
                "the receipt's counts ({}) disagree with the changes it lists ({})",
                counts_text(&receipt.counts),
                counts_text(&listed)
            ),
        ));
    }
    // The plan, by its hash.
    match plans.iter().find(|p| p.sha256 == receipt.plan_sha256) {
        None => findings.push(Finding::at(
            path,
            format!(
                "the receipt names plan {} with SHA-256 {}, and no file in the archive has that hash",
                receipt.plan_id, receipt.plan_sha256
            ),
        )),
        Some(p) => {
            let id = p.plan.as_ref().map(|plan| plan.plan_id);
            if id != Some(receipt.plan_id) {
                findings.push(Finding::at(
                    path,
                    format!(
                        "the receipt names plan {}, but {} (the file with its hash) is not that plan",
                        receipt.plan_id, p.path
                    ),
                ));
            }
        }
    }
    if receipt.mode == ReceiptMode::ManualVerified {
        return;
    }
    // The journal head it anchors.
    let anchor = &receipt.journal;
    if anchor.is_empty() {
        findings.push(Finding::at(path, "the receipt names no journal, but says apply made it"));
        return;
    }
    let index = anchor.seq.checked_sub(1).map(|i| i as usize);
    let holds = |j: &&JournalFile<'_>| index.and_then(|i| j.chain.links.get(i)).is_some_and(|l| *l == anchor.head);
    let wanted = base_name(&anchor.path);
    let journal =
        journals.iter().filter(holds).find(|j| base_name(j.path) == wanted).or_else(|| journals.iter().find(holds));
    let Some(journal) = journal else {
        findings.push(Finding::at(
            path,
            format!(
                "the receipt's journal head {} at seq {} is in no journal of the archive (it names {})",
                anchor.head, anchor.seq, anchor.path
            ),
        ));
        return;
    };
    let entry = index.and_then(|i| journal.chain.entries.get(i));
    let finished_there =
        matches!(entry.map(|e| &e.event), Some(Event::ApplyFinished { plan_id, .. }) if *plan_id == receipt.plan_id);
    if !finished_there {
        findings.push(Finding::at(
            path,
            format!(
                "the receipt's journal head is {} seq {}, which is not the apply-finished of plan {}",
                journal.path, anchor.seq, receipt.plan_id
            ),
        ));
    }
    let Ok(progress) = PlanProgress::of(&journal.chain, receipt.plan_id) else { return };
    let tally = OutcomeCounts::tally(progress.outcomes.values().map(|r| &r.outcome));
    if tally != receipt.counts {
        findings.push(Finding::at(
            path,
            format!(
                "the receipt's counts ({}) disagree with its journal {} ({})",
                counts_text(&receipt.counts),
                journal.path,
                counts_text(&tally)
            ),
        ));
    }
    let differing = receipt
        .groups
        .iter()
        .flat_map(|g| g.changes.iter().map(move |c| (g, c)))
        .filter(|(g, c)| {
            progress.outcomes.get(&(g.group_id.clone(), c.user_id.clone())).map(|r| r.outcome) != Some(c.outcome)
        })
        .count();
    if differing > 0 {
        findings.push(Finding::at(
            path,
            format!(
                "{differing} of the receipt's changes have another outcome (or none) in its journal {}",
                journal.path
            ),
        ));
    }
    if progress.plan_sha256.as_deref().is_some_and(|s| s != receipt.plan_sha256) {
        findings.push(Finding::at(
            path,
            format!("the receipt's plan SHA-256 differs from the one its journal {} recorded", journal.path),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::journal::{entry_line, header_line, link, Entry, Header};
    use crate::apply::receipt::{JournalAnchor, ReceiptInput};
    use crate::apply::{Applier, FinishStatus};
    use crate::apply::{ChangeResult, Outcome};
    use crate::trust::SigningKey;

    struct Keys {
        planner: SigningKey,
        approver: SigningKey,
        admin: SigningKey,
        allowed: AllowedSigners,
    }

    fn keys() -> Keys {
        let planner = SigningKey::generate("planner@contoso.example").unwrap();
        let approver = SigningKey::generate("approver@contoso.example").unwrap();
        let admin = SigningKey::generate("admin@contoso.example").unwrap();
        let text = format!(
            "planner@contoso.example namespaces=\"writeback-plan\" {}\napprover@contoso.example namespaces=\"writeback-approval\" {}\nadmin@contoso.example namespaces=\"writeback-receipt\" {}\n",
            planner.public_key_openssh(),
            approver.public_key_openssh(),
            admin.public_key_openssh()
        );
        let allowed = AllowedSigners::parse(&text, "allowed_signers").unwrap();
        Keys { planner, approver, admin, allowed }
    }

    fn t(s: &str) -> DateTime<Utc> {
        plan::timestamp::parse(s).unwrap()
    }

    /// A journal's bytes from events, and its head and seq.
    fn journal_bytes(events: Vec<Event>) -> (Vec<u8>, String, u64) {
        let header = Header {
            format: journal::JOURNAL_FORMAT.into(),
            format_version: journal::JOURNAL_VERSION.into(),
            created_at: t("2026-11-28T09:00:00Z"),
            tool_version: "t".into(),
        };
        let mut line = header_line(&header);
        let mut bytes = line.clone();
        bytes.push(b'\n');
        let mut seq = 0;
        for event in events {
            seq += 1;
            let entry = Entry { seq, ts: t("2026-11-28T09:01:00Z"), prev: link(&line), event };
            line = entry_line(&entry);
            bytes.extend_from_slice(&line);
            bytes.push(b'\n');
        }
        (bytes, link(&line), seq)
    }

    fn file(path: &str, bytes: impl Into<Vec<u8>>) -> ArchiveFile {
        ArchiveFile { path: path.into(), bytes: bytes.into() }
    }

    fn applier() -> Applier {
        Applier {
            os_user: Some("admin".into()),
            key_principal: Some("admin@contoso.example".into()),
            key_fingerprint: None,
            tool_version: "t".into(),
        }
    }

    /// An archive that adds up: a signed plan, an approval, its journal and a signed receipt.
    fn archive(k: &Keys) -> (Vec<ArchiveFile>, Plan, Vec<u8>) {
        let plan = crate::fixtures::sample_plan();
        let bytes = plan::encode(&plan, plan::PlanFormat::Json);
        let sha = plan::precondition::sha256_hex(&bytes);
        let mut events = vec![Event::ApplyStarted {
            plan_id: plan.plan_id,
            plan_sha256: sha.clone(),
            tenant_id: None,
            applier: applier(),
            entra_actor: None,
            resume: false,
            pending: 0,
        }];
        let mut outcomes = BTreeMap::new();
        for g in &plan.groups {
            for c in &g.changes {
                let result = ChangeResult {
                    group_id: g.group_id.clone(),
                    user_id: c.user_id.clone(),
                    action: c.action,
                    outcome: Outcome::Applied,
                    detail: None,
                    error: None,
                };
                outcomes.insert((g.group_id.clone(), c.user_id.clone()), result.clone());
                events.push(Event::ChangeOutcome { plan_id: plan.plan_id, result, request: None });
            }
        }
        let counts = OutcomeCounts::tally(outcomes.values().map(|r| &r.outcome));
        events.push(Event::ApplyFinished { plan_id: plan.plan_id, status: FinishStatus::Complete, counts });
        let (journal, head, seq) = journal_bytes(events);
        let receipt = Receipt::build(ReceiptInput {
            plan: &plan,
            plan_sha256: &sha,
            plan_file: "plan.json".into(),
            tenant_id: None,
            applier: applier(),
            entra_actor: None,
            started_at: t("2026-11-28T09:01:00Z"),
            finished_at: t("2026-11-28T09:01:00Z"),
            runs: 1,
            outcomes: &outcomes,
            journal: JournalAnchor { path: "/home/admin/plan.json.journal.jsonl".into(), head, seq },
        })
        .unwrap();
        let receipt = receipt.encode();
        let files = vec![
            file("a/plan.json", bytes.clone()),
            file("a/plan.json.sig", k.planner.sign("writeback-plan", &bytes).unwrap()),
            file("a/plan.json.approval-approver.sig", k.approver.sign("writeback-approval", &bytes).unwrap()),
            file("a/plan.json.journal.jsonl", journal),
            file("a/plan.json.receipt.json", receipt.clone()),
            file("a/plan.json.receipt.json.sig", k.admin.sign("writeback-receipt", &receipt).unwrap()),
            file("a/notes.txt", "not audited"),
        ];
        (files, plan, receipt)
    }

    fn run(files: &[ArchiveFile], k: &Keys) -> AuditReport {
        audit(files, &k.allowed, t("2030-01-01T00:00:00Z"))
    }

    fn replace(files: &mut [ArchiveFile], path: &str, bytes: Vec<u8>) {
        files.iter_mut().find(|f| f.path == path).unwrap().bytes = bytes;
    }

    fn messages(r: &AuditReport) -> String {
        r.findings.iter().map(|f| format!("{f}\n")).collect()
    }

    #[test]
    fn a_consistent_archive_has_no_findings() {
        let k = keys();
        let (files, plan, _) = archive(&k);
        let r = run(&files, &k);
        assert!(r.findings.is_empty(), "{}", messages(&r));
        assert_eq!(r.plans.len(), 1);
        let row = &r.plans[0];
        assert_eq!(row.plan_id, plan.plan_id);
        assert_eq!(row.signer, "planner@contoso.example");
        assert_eq!(row.approvers, vec!["approver@contoso.example".to_string()]);
        assert_eq!(row.applied_by.as_deref(), Some("admin@contoso.example"));
        let changes: u64 = plan.groups.iter().map(|g| g.changes.len() as u64).sum();
        assert_eq!((row.applied, row.failed, row.skipped), (Some(changes), Some(0), Some(0)));
        assert_eq!(r.files, FileCounts { plans: 1, signatures: 3, approvals: 1, receipts: 1, journals: 1 });
    }

    #[test]
    fn a_changed_plan_fails_its_signature_and_loses_its_receipt() {
        let k = keys();
        let (mut files, _, _) = archive(&k);
        let text = String::from_utf8(files[0].bytes.clone()).unwrap().replacen("User, ", "User,  ", 1);
        replace(&mut files, "a/plan.json", text.into_bytes());
        let text = messages(&run(&files, &k));
        assert!(text.contains("a/plan.json: the plan's signature"), "{text}");
        assert!(text.contains("a/plan.json.approval-approver.sig: the approval does not match"), "{text}");
        assert!(text.contains("a/plan.json.receipt.json: the receipt names plan"), "{text}");
        assert!(text.contains("differs from a/plan.json"), "the journal's recorded hash differs: {text}");
    }

    #[test]
    fn untrusted_plan_signer_and_self_approval() {
        let k = keys();
        let (mut files, _, _) = archive(&k);
        let bytes = files[0].bytes.clone();
        replace(&mut files, "a/plan.json.sig", k.approver.sign("writeback-plan", &bytes).unwrap().into_bytes());
        let text = messages(&run(&files, &k));
        assert!(text.contains("a/plan.json: the plan's signature"), "{text}");

        let (mut files, _, _) = archive(&k);
        files.push(file("a/plan.json.approval-planner.sig", k.planner.sign("writeback-approval", &bytes).unwrap()));
        let text = messages(&run(&files, &k));
        assert!(text.contains("a/plan.json.approval-planner.sig: the approval does not check out"), "{text}");
    }

    #[test]
    fn a_broken_journal_chain_names_the_line() {
        let k = keys();
        let (mut files, _, _) = archive(&k);
        let text = String::from_utf8(files[3].bytes.clone()).unwrap();
        let changed = text.replacen("\"applied\"", "\"failed\"", 1);
        assert_ne!(text, changed);
        replace(&mut files, "a/plan.json.journal.jsonl", changed.into_bytes());
        let r = run(&files, &k);
        let f = r.findings.iter().find(|f| f.file == "a/plan.json.journal.jsonl").expect("a journal finding");
        assert_eq!(f.line, Some(4), "line 3 (the first outcome) changed, so line 4's prev breaks: {f}");
        assert_eq!(f.seq, Some(3), "{f}");
        assert!(
            f.to_string()
                .starts_with("a/plan.json.journal.jsonl, line 4 (seq 3): the journal chain is broken: prev is sha256:"),
            "{f}"
        );
        assert_eq!(f.message.matches("broken").count(), 1, "said once: {f}");
        assert!(messages(&r).contains("is in no journal of the archive"), "{}", messages(&r));
    }

    #[test]
    fn receipt_tampering_counts_and_replays() {
        let k = keys();
        let (mut files, _, receipt) = archive(&k);
        // Counts changed and re-signed by a trusted admin: the signature is good, the counts are not.
        let mut r = Receipt::decode(&receipt).unwrap();
        r.counts.applied -= 1;
        r.counts.failed += 1;
        let bytes = r.encode();
        replace(&mut files, "a/plan.json.receipt.json.sig", k.admin.sign("writeback-receipt", &bytes).unwrap().into());
        replace(&mut files, "a/plan.json.receipt.json", bytes);
        let text = messages(&run(&files, &k));
        assert!(text.contains("disagree with its journal"), "{text}");
        assert!(text.contains("disagree with the changes it lists"), "{text}");

        // Unsigned, and a second receipt for the same plan.
        let (mut files, _, receipt) = archive(&k);
        files.retain(|f| f.path != "a/plan.json.receipt.json.sig");
        files.push(file("b/copy.receipt.json", receipt));
        let text = messages(&run(&files, &k));
        assert!(text.contains("a/plan.json.receipt.json: the receipt is not signed"), "{text}");
        assert!(
            text.contains("b/copy.receipt.json: plan 00000000-0000-0000-0000-000000001234 has another receipt"),
            "{text}"
        );
    }

    #[test]
    fn journal_events_without_plan_or_receipt_and_twice_finished() {
        let k = keys();
        let (mut files, _, _) = archive(&k);
        let journal = files[3].bytes.clone();
        files.push(file("b/again.jsonl", journal));
        let text = messages(&run(&files, &k));
        assert!(text.contains("b/again.jsonl, line"), "{text}");
        assert!(text.contains("was applied twice"), "{text}");

        let (mut files, _, _) = archive(&k);
        files.retain(|f| !f.path.starts_with("a/plan.json.receipt"));
        files.retain(|f| f.path != "a/plan.json" && f.path != "a/plan.json.sig");
        let text = messages(&run(&files, &k));
        assert!(text.contains("which is not in the archive"), "{text}");
        assert!(text.contains("holds no receipt"), "{text}");
    }

    #[test]
    fn orphan_signatures_and_a_torn_tail() {
        let k = keys();
        let (mut files, _, _) = archive(&k);
        files.push(file("a/gone.json.sig", "x"));
        files.push(file("a/gone.json.approval-x.sig", "x"));
        let mut journal = files[3].bytes.clone();
        journal.extend_from_slice(b"{\"seq\":");
        replace(&mut files, "a/plan.json.journal.jsonl", journal);
        let r = run(&files, &k);
        let text = messages(&r);
        assert!(text.contains("a/gone.json.sig: a signature of a/gone.json"), "{text}");
        assert!(text.contains("a/gone.json.approval-x.sig: an approval of a/gone.json"), "{text}");
        assert!(text.contains("incomplete last line"), "{text}");
    }
}
