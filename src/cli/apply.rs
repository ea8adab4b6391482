//! `writeback apply`: verify a signed plan, pass the gates, show the review, ask, then apply it through
//! Microsoft Graph with a journal and a receipt.

use std::io::{BufRead, IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use clap::Args;
use comfy_table::{presets, Cell, CellAlignment, ContentArrangement, Table};

use crate::apply::executor::{self, Estimate, Transport};
use crate::apply::gates::{DirectoryReads, GroupWork, Thresholds};
use crate::apply::receipt::{Applier, Receipt, RECEIPT_NAMESPACE};
use crate::apply::session::{self, Clock, Finished, GateOptions, Prepared, RunInputs};
use crate::apply::ChangeResult;
use crate::cli::Context;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::report::review::{render_review, SignatureStatus};
use crate::trust::{self, SigningKey};

/// Arguments of `writeback apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The signed plan file (JSON or CSV).
    pub plan: PathBuf,

    /// Whose signatures to trust.
    #[command(flatten)]
    pub trust: crate::cli::options::TrustOptions,

    /// The plan's signature [default: PLAN.sig].
    #[arg(long, value_name = "SIG")]
    pub signature: Option<PathBuf>,

    /// Refuse the plan unless it has N valid approvals (`writeback approve`) from allowed signers other than its
    /// signer [default: require_approvals in the config, else 0].
    #[arg(long, value_name = "N")]
    pub require_approvals: Option<u32>,

    /// The journal to append to [default: PLAN.journal.jsonl].
    #[arg(long, value_name = "FILE")]
    pub journal: Option<PathBuf>,

    /// Apply without asking (for automation). Without a terminal, apply refuses unless this is given.
    #[arg(long, short = 'y')]
    pub yes: bool,

    /// Run the gates, show the review and what would be sent, then stop. Nothing is written anywhere.
    #[arg(long)]
    pub dry_run: bool,

    /// Refuse the plan when the membership changed since planning (by default only the changes still needed are
    /// applied).
    #[arg(long)]
    pub strict: bool,

    /// Refuse when the plan removes more members than this, over all groups [default: 500].
    #[arg(long, value_name = "N")]
    pub max_removals: Option<u64>,

    /// Refuse when the plan removes more than this percentage of a group's members [default: 20].
    #[arg(long, value_name = "P")]
    pub max_removal_percent: Option<f64>,

    /// Sign the receipt with this key (SSHSIG, namespace writeback-receipt) into RECEIPT.sig.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,

    /// Print the receipt as JSON on stdout (the review and progress go to stderr).
    #[arg(long)]
    pub json: bool,

    /// Where Microsoft Graph is.
    #[command(flatten)]
    pub graph: crate::cli::options::GraphOptions,

    /// How many PATCHes of 20 members go into one $batch (1-20). Lower it if Graph answers many 503s.
    #[arg(long, value_name = "N", default_value_t = executor::MAX_BATCH_ITEMS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=20))]
    pub patches_per_batch: usize,

    /// The most $batch requests in flight at once (it halves under throttling).
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=32))]
    pub concurrency: usize,

    /// Abandon a $batch request that has no answer after this many seconds, and send its items again.
    #[arg(long, value_name = "SECONDS", default_value_t = 120.0)]
    pub request_timeout: f64,
}

/// Everything `apply` needs from Graph: the gates' reads and the `$batch` transport.
pub trait Backend: DirectoryReads + Transport {
    /// The Graph base URL that `members@odata.bind` references point at.
    fn bind_base(&self) -> String;

    /// The first and the longest back-off for items Graph asks to send again without saying when.
    fn backoff(&self) -> (std::time::Duration, std::time::Duration) {
        (std::time::Duration::from_secs(1), std::time::Duration::from_secs(60))
    }
}

/// The system clock (the one place `apply` reads it).
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Runs `writeback apply`.
pub fn run(args: ApplyArgs, ctx: &Context) -> Result<()> {
    let config = args.trust.load_config()?;
    let (graph_url, login_url) = args.graph.resolve(config.as_ref());
    let checked = check(&args, config.as_ref(), ctx)?;
    let runtime = crate::http::runtime()?;
    let backend = crate::apply::graph::GraphBackend::connect(graph_url.as_deref(), login_url.as_deref())?;
    runtime.block_on(run_with(args, checked, ctx, Arc::new(backend)))
}

/// What the offline checks (gates 1–3 and the arguments) produced.
pub struct Checked {
    verified: trust::VerifiedPlan,
    journal: PathBuf,
    receipt: PathBuf,
    key: Option<SigningKey>,
    options: GateOptions,
}

/// Gates 1–3 (signature and signer, format, expiry) and everything else that needs no network: the
/// arguments, the key. Nothing is sent before these pass.
pub fn check(args: &ApplyArgs, config: Option<&Config>, ctx: &Context) -> Result<Checked> {
    let allowed_signers = args.trust.require_allowed_signers(config, "apply")?;
    let max_removal_percent = args
        .max_removal_percent
        .or_else(|| config.and_then(|c| c.defaults.max_removal_percent))
        .unwrap_or(Thresholds::default().max_removal_percent);
    if !(args.request_timeout.is_finite() && args.request_timeout > 0.0 && args.request_timeout < 86_400.0) {
        return Err(Error::Usage(format!("--request-timeout {} is not a number of seconds", args.request_timeout)));
    }
    if !(0.0..=100.0).contains(&max_removal_percent) {
        return Err(Error::Usage(format!("--max-removal-percent {max_removal_percent} is not between 0 and 100")));
    }
    let thresholds = Thresholds {
        max_removals: args
            .max_removals
            .or_else(|| config.and_then(|c| c.defaults.max_removals))
            .unwrap_or(Thresholds::default().max_removals),
        max_removal_percent,
    };
    // Gates 1 and 2: signature, signer, format (trust verifies the bytes before it parses them).
    let verified = trust::verify_plan_files(&args.plan, args.signature.as_deref(), &allowed_signers, ctx.now)?;
    // Gate 3: expiry. There is no override.
    verified.ensure_unexpired(&args.plan, ctx.now)?;
    // The two-person rule: N approvals from allowed signers other than the planner (offline, before any request).
    let required = args.require_approvals.or_else(|| config.and_then(|c| c.defaults.require_approvals)).unwrap_or(0);
    crate::approvals::require_for(&args.plan, &verified, &allowed_signers, required, ctx.now)?;
    let key = match &args.key {
        Some(path) => Some(SigningKey::load(path).map_err(|e| Error::input(&e.path, e.problem.to_string()))?),
        None => None,
    };
    Ok(Checked {
        verified,
        journal: args.journal.clone().unwrap_or_else(|| crate::archive::journal_path(&args.plan)),
        receipt: crate::archive::receipt_path(&args.plan),
        key,
        options: GateOptions { strict: args.strict, thresholds },
    })
}

fn applier(key: Option<&SigningKey>) -> Applier {
    let os_user = ["USER", "USERNAME", "LOGNAME"].iter().find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()));
    Applier {
        os_user,
        key_principal: key.map(|k| k.comment().to_string()).filter(|c| !c.is_empty()),
        key_fingerprint: key.map(SigningKey::fingerprint),
        tool_version: crate::tool_version(),
    }
}

/// Runs `apply` after the offline checks, against any backend (Graph, or a fake in tests).
pub async fn run_with<B: Backend>(args: ApplyArgs, checked: Checked, ctx: &Context, backend: Arc<B>) -> Result<()> {
    let plan = &checked.verified.plan;
    let sha256 = checked.verified.sha256.clone();
    // A run killed after it sealed the journal but before the receipt was written: write the receipt now,
    // from the journal, and send nothing.
    if !checked.receipt.exists() {
        if let Some(chain) = crate::apply::journal::read(&checked.journal)? {
            if let Some(receipt) = session::rebuild_receipt(plan, &sha256, &args.plan, &checked.journal, &chain)? {
                eprintln!(
                    "plan {} had already finished (journal {}), but its receipt was missing; it was written from the \
                     journal. Nothing was sent",
                    plan.plan_id,
                    checked.journal.display()
                );
                let finished = Finished { receipt, stats: Default::default(), settled: 0, resumed: false };
                return finish(&args, &checked, &finished);
            }
        }
    }
    // Gates 4–8.
    let prepared =
        session::prepare(backend.as_ref(), plan, &sha256, &checked.journal, &checked.receipt, checked.options).await?;
    let estimate = executor::estimate(&prepared.works, args.patches_per_batch);

    // The review: on stdout, or on stderr when stdout is for the receipt JSON.
    let status = SignatureStatus::Valid {
        principal: checked.verified.principal.clone(),
        fingerprint: checked.verified.fingerprint.clone(),
    };
    let width = crate::terminal::table_width();
    let mut review = render_review(plan, &sha256, &status, ctx.now, width);
    review.push_str(&gate_report(&prepared, &estimate, &checked.journal));
    if args.json {
        eprint!("{review}");
    } else {
        print!("{review}");
    }

    if args.dry_run {
        let text = dry_run_report(&prepared, &estimate, args.patches_per_batch);
        if args.json {
            eprint!("{text}");
            println!("{}", serde_json::to_string_pretty(&DryRunJson::new(&prepared, &estimate)).unwrap_or_default());
        } else {
            print!("{text}");
        }
        return Ok(());
    }

    if prepared.pending() > 0 || !prepared.resuming() {
        confirm(&args, plan, &prepared, &estimate)?;
    }

    // Ctrl-C stops sending; answers already on the way are journaled. A second Ctrl-C exits at once (the
    // journal is synced after every batch, so a rerun still resumes correctly).
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\nstopping: waiting for the requests in flight (Ctrl-C again to quit at once)…");
            let _ = stop_tx.send(true);
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });

    let backoff = backend.backoff();
    let bar = progress_bar(prepared.pending());
    let mut on_results = |results: &[ChangeResult]| bar.inc(results.len() as u64);
    let run = RunInputs {
        journal_path: &checked.journal,
        plan_path: &args.plan,
        plan_sha256: &sha256,
        applier: applier(checked.key.as_ref()),
        clock: &SystemClock,
        config: executor::Config {
            backoff: backoff.0,
            max_backoff: backoff.1,
            patches_per_batch: args.patches_per_batch,
            max_concurrency: args.concurrency,
            bind_base: backend.bind_base(),
            request_timeout: Some(std::time::Duration::from_secs_f64(args.request_timeout)),
            ..executor::Config::default()
        },
        stop: Some(stop_rx),
    };
    let finished = session::execute(Arc::clone(&backend), plan, &prepared, run, &mut on_results).await;
    bar.finish_and_clear();
    let finished = finished?;
    finish(&args, &checked, &finished)
}

/// Writes the receipt (and its signature), prints the summary or the JSON, and maps a partial apply to exit 25.
fn finish(args: &ApplyArgs, checked: &Checked, finished: &Finished) -> Result<()> {
    let width = crate::terminal::table_width();
    write_receipt(&checked.receipt, &finished.receipt, checked.key.as_ref())?;
    if args.json {
        print!("{}", String::from_utf8_lossy(&finished.receipt.encode()));
    } else {
        print!("{}", summary(finished, &checked.receipt, checked.key.is_some(), width));
    }
    let counts = finished.receipt.counts;
    if counts.failed > 0 {
        return Err(Error::Partial(format!(
            "{} of {} changes failed; {} lists each with Graph's reason. Fix the cause and make a new plan for \
                 what is left",
            counts.failed,
            counts.total(),
            checked.receipt.display()
        )));
    }
    Ok(())
}

fn write_receipt(path: &Path, receipt: &Receipt, key: Option<&SigningKey>) -> Result<()> {
    let bytes = receipt.encode();
    match key {
        Some(key) => {
            let sig = key
                .sign(RECEIPT_NAMESPACE, &bytes)
                .map_err(|e| Error::Internal(format!("cannot sign the receipt: {e}")))?;
            let sig_path = crate::archive::signature_path(path);
            crate::atomic_write::write_together(&[(path, &bytes), (&sig_path, sig.as_bytes())])
        }
        None => crate::atomic_write::write(path, &bytes),
    }
}

fn confirm(args: &ApplyArgs, plan: &crate::plan::Plan, prepared: &Prepared, estimate: &Estimate) -> Result<()> {
    if args.yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Error::NotConfirmed(
            "there is no terminal to ask for confirmation on; nothing was sent. Review the plan, then run \
                      again with --yes to apply it without asking"
                .into(),
        ));
    }
    eprint!(
        "\nApply plan {} to tenant {}: {} adds and {} removes ({} Graph writes)? Type 'yes' to apply: ",
        plan.plan_id, prepared.tenant_id, estimate.adds, estimate.removes, estimate.writes
    );
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Error::Internal(format!("cannot read the answer: {e}")))?;
    if answer.trim().eq_ignore_ascii_case("yes") {
        Ok(())
    } else {
        Err(Error::NotConfirmed("not confirmed; nothing was sent".into()))
    }
}

fn progress_bar(total: u64) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::with_draw_target(Some(total), indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} applying [{bar:40}] {pos}/{len} changes, {elapsed} ({eta} left)",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn gate_report(prepared: &Prepared, estimate: &Estimate, journal: &Path) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "Gates passed: signature, format, expiry, tenant {}, groups, replay, drift, thresholds\n",
        prepared.tenant_id
    ));
    if prepared.resuming() {
        let recorded: u64 = prepared.works.iter().map(|w| w.recorded).sum();
        out.push_str(&format!(
            "Resuming: {} earlier run(s) recorded {recorded} outcome(s) in {}; those changes are not sent again\n",
            prepared.progress.runs,
            journal.display()
        ));
    }
    for work in &prepared.works {
        drift_lines(&mut out, work);
    }
    out.push_str(&format!(
        "To send: {} adds and {} removes, {} already settled, in {} $batch request(s) carrying {} writes\n",
        estimate.adds,
        estimate.removes,
        prepared.works.iter().map(|w| w.settled.len()).sum::<usize>(),
        estimate.requests,
        estimate.writes
    ));
    out
}

fn drift_lines(out: &mut String, work: &GroupWork) {
    if work.drift.is_empty() {
        return;
    }
    out.push_str(&format!(
        "Drift in {}: {} joined and {} left since planning\n",
        work.label,
        work.drift.joined.len(),
        work.drift.left.len()
    ));
    const SHOW: usize = 10;
    for (sign, ids) in [("+", &work.drift.joined), ("-", &work.drift.left)] {
        for id in ids.iter().take(SHOW) {
            out.push_str(&format!("  {sign} {id}\n"));
        }
        if ids.len() > SHOW {
            out.push_str(&format!("  {sign} … and {} more\n", ids.len() - SHOW));
        }
    }
    if !work.settled.is_empty() {
        out.push_str(&format!(
            "  {} planned change(s) are already in effect and will be recorded without a write\n",
            work.settled.len()
        ));
    }
}

fn dry_run_report(prepared: &Prepared, estimate: &Estimate, ppb: usize) -> String {
    let mut out = String::from("\nDry run: nothing was sent and nothing was written. A run would send:\n");
    let mut table = Table::new();
    table.load_preset(presets::UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Dynamic);
    table.set_header(["Request", "Count", "Graph writes"]);
    let right = |n: u64| Cell::new(n).set_alignment(CellAlignment::Right);
    table.add_row(vec![
        Cell::new("PATCH /groups/{id} (members@odata.bind, ≤20 each)"),
        right(estimate.patches),
        right(estimate.patches),
    ]);
    table.add_row(vec![
        Cell::new("DELETE /groups/{id}/members/{user}/$ref"),
        right(estimate.deletes),
        right(estimate.deletes),
    ]);
    table.add_row(vec![
        Cell::new(format!("POST /$batch (≤20 items, ≤{ppb} PATCHes)")),
        right(estimate.requests),
        right(0),
    ]);
    let settled: u64 = prepared.works.iter().map(|w| w.settled.len() as u64).sum();
    out.push_str(&table.to_string());
    out.push_str(&format!(
        "\n{} HTTP requests for the writes (plus the reads already made), {} writes; {settled} change(s) need no write\n",
        estimate.requests, estimate.writes
    ));
    out
}

#[derive(serde::Serialize)]
struct DryRunJson<'a> {
    dry_run: bool,
    tenant_id: &'a str,
    resuming: bool,
    estimate: &'a Estimate,
    settled: u64,
    groups: Vec<DryRunGroup<'a>>,
}

#[derive(serde::Serialize)]
struct DryRunGroup<'a> {
    group_id: &'a crate::identity::ObjectId,
    adds: usize,
    removes: usize,
    settled: usize,
    recorded: u64,
    drift: &'a crate::apply::gates::Drift,
}

impl<'a> DryRunJson<'a> {
    fn new(prepared: &'a Prepared, estimate: &'a Estimate) -> Self {
        DryRunJson {
            dry_run: true,
            tenant_id: &prepared.tenant_id,
            resuming: prepared.resuming(),
            estimate,
            settled: prepared.works.iter().map(|w| w.settled.len() as u64).sum(),
            groups: prepared
                .works
                .iter()
                .map(|w| DryRunGroup {
                    group_id: &w.group_id,
                    adds: w.adds.len(),
                    removes: w.removes.len(),
                    settled: w.settled.len(),
                    recorded: w.recorded,
                    drift: &w.drift,
                })
                .collect(),
        }
    }
}

/// The final summary: counts per group, every failure, and where the receipt and journal are.
pub fn summary(finished: &Finished, receipt_path: &Path, signed: bool, width: u16) -> String {
    let receipt = &finished.receipt;
    let mut out = String::from("\n");
    let mut table = Table::new();
    table
        .load_preset(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_width(width);
    table.set_header(["Group", "Applied", "Already member", "Already absent", "Failed"]);
    let right = |n: u64| Cell::new(n).set_alignment(CellAlignment::Right);
    for g in &receipt.groups {
        let name = g.display_name.clone().unwrap_or_else(|| g.group_id.to_string());
        table.add_row(vec![
            Cell::new(name),
            right(g.counts.applied),
            right(g.counts.already_member),
            right(g.counts.already_absent),
            right(g.counts.failed),
        ]);
    }
    if receipt.groups.len() > 1 {
        let c = receipt.counts;
        table.add_row(vec![
            Cell::new("Total"),
            right(c.applied),
            right(c.already_member),
            right(c.already_absent),
            right(c.failed),
        ]);
    }
    out.push_str(&table.to_string());
    out.push('\n');
    let failures: Vec<_> = receipt.failures().collect();
    if !failures.is_empty() {
        let mut t = Table::new();
        t.load_preset(presets::UTF8_FULL_CONDENSED)
            .set_content_arrangement(ContentArrangement::Dynamic)
            .set_width(width);
        t.set_header(["Failed", "User", "Reason", "Graph error", "request-id"]);
        for (_, c) in &failures {
            let err = c.error.as_ref();
            t.add_row(vec![
                Cell::new(c.action.as_str()),
                Cell::new(&c.upn),
                Cell::new(c.detail.clone().unwrap_or_default()),
                Cell::new(
                    err.map(|e| {
                        format!(
                            "{} {}: {}",
                            e.status,
                            e.code.clone().unwrap_or_default(),
                            e.message.clone().unwrap_or_default()
                        )
                    })
                    .unwrap_or_default(),
                ),
                Cell::new(err.and_then(|e| e.request_id.clone()).unwrap_or_default()),
            ]);
        }
        out.push_str(&t.to_string());
        out.push('\n');
    }
    let s = &finished.stats;
    out.push_str(&format!(
        "Status     {}{}\n",
        receipt.status.as_str(),
        if finished.resumed { " (resumed an interrupted apply)" } else { "" }
    ));
    out.push_str(&format!(
        "Sent       {} $batch request(s): {} PATCH, {} DELETE $ref; {} throttled, {} retried, {} split\n",
        s.requests, s.patches, s.deletes, s.throttled, s.retried, s.splits
    ));
    out.push_str(&format!(
        "Receipt    {}{}\n",
        receipt_path.display(),
        if signed { " (signed: .sig beside it)" } else { "" }
    ));
    out.push_str(&format!(
        "Journal    {} (head {}, seq {})\n",
        receipt.journal.path, receipt.journal.head, receipt.journal.seq
    ));
    out
}
