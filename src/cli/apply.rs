//! `writeback apply`: verify a signed plan, pass the gates, show the review, ask, then apply it through
//! Microsoft Graph with a journal and a receipt. The sequence is [`crate::apply::run`]; this file parses the
//! flags, plays the [`ApplyUi`] at the terminal, and prints the result.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Args;

use crate::apply::executor;
use crate::apply::run::{self, ApplyOutcome, ApplyRequest, ApplyUi, Review};
use crate::apply::ChangeResult;
use crate::cli::Context;
use crate::error::{Error, Result};
use crate::report::apply::{confirm_question, dry_run_report, review_text, summary, DryRunJson};

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

    /// The gates' limits and what they may accept.
    #[command(flatten)]
    pub gates: crate::cli::options::GateFlags,

    /// The ledger of started, finished and cancelled plans [default: ledger in the config, else the user's state
    /// folder, ~/.local/state/writeback/ledger on Linux].
    #[arg(long, value_name = "DIR")]
    pub ledger: Option<PathBuf>,

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
    #[arg(long, value_name = "SECONDS", default_value = "120", value_parser = crate::cli::options::seconds)]
    pub request_timeout: std::time::Duration,
}

/// Runs `writeback apply`.
pub fn run(args: ApplyArgs, ctx: &Context) -> Result<()> {
    let request = request(&args, ctx)?;
    let mut ui = Terminal { json: args.json, yes: args.yes, progress: None, deferred: None };
    match run::apply(&request, &mut ui)? {
        ApplyOutcome::DryRun => Ok(()),
        ApplyOutcome::Done(done) => {
            if args.json {
                crate::out!("{}", String::from_utf8_lossy(&done.finished.receipt.encode()));
            } else {
                let width = crate::terminal::table_width();
                crate::out!("{}", summary(&done.finished, &done.receipt_path, done.signed, width));
            }
            done.check_complete()
        }
    }
}

/// The flags, the environment and the config merged into a request; the arguments are checked here, before
/// anything is read.
fn request(args: &ApplyArgs, ctx: &Context) -> Result<ApplyRequest> {
    let config = args.trust.load_config(args.plan.parent())?;
    let config = config.as_ref();
    let sign_in = args.graph.resolve(config);
    let allowed_signers = args.trust.require_allowed_signers(config, "apply")?;
    Ok(ApplyRequest {
        plan: args.plan.clone(),
        signature: args.signature.clone(),
        allowed_signers,
        require_approvals: args
            .require_approvals
            .or_else(|| config.and_then(|c| c.defaults.require_approvals))
            .unwrap_or(0),
        journal: args.journal.clone().unwrap_or_else(|| crate::archive::journal_path(&args.plan)),
        ledger: crate::ledger::resolve_dir(args.ledger.as_deref(), config)?,
        key: args.key.clone(),
        gates: args.gates.resolve(config)?,
        dry_run: args.dry_run,
        patches_per_batch: args.patches_per_batch,
        concurrency: args.concurrency,
        request_timeout: args.request_timeout,
        sign_in,
        now: ctx.now,
        max_plan_lifetime: crate::config::max_plan_lifetime(config)?,
    })
}

/// The apply at a terminal: the review on stdout (stderr with `--json`, where stdout is for the receipt), the
/// question on stderr, a progress bar, and Ctrl-C.
struct Terminal {
    json: bool,
    yes: bool,
    progress: Option<crate::progress::Changes>,
    deferred: Option<crate::interrupt::Deferred>,
}

impl Terminal {
    /// The width of the stream [`Terminal::say`] writes to.
    fn width(&self) -> Option<u16> {
        if self.json {
            crate::terminal::stderr_table_width()
        } else {
            crate::terminal::table_width()
        }
    }

    /// Text for people: on stdout, or on stderr when stdout carries JSON.
    fn say(&self, text: &str) {
        if self.json {
            crate::eout!("{text}");
        } else {
            crate::out!("{text}");
        }
    }
}

impl ApplyUi for Terminal {
    fn notice(&mut self, text: &str) {
        crate::eoutln!("{text}");
    }

    fn review(&mut self, review: &Review<'_>) {
        self.say(&review_text(review, self.width()));
    }

    fn dry_run(&mut self, review: &Review<'_>) {
        self.say(&dry_run_report(review.prepared, review.estimate, review.patches_per_batch));
        if self.json {
            let json = DryRunJson::new(review.prepared, review.estimate);
            crate::outln!("{}", serde_json::to_string_pretty(&json).unwrap_or_default());
        }
    }

    fn confirm(&mut self, review: &Review<'_>) -> Result<()> {
        if self.yes {
            return Ok(());
        }
        if !std::io::stdin().is_terminal() {
            return Err(Error::NotConfirmed(
                "there is no terminal to ask for confirmation on; nothing was sent. Review the plan, then run \
                 again with --yes to apply it without asking"
                    .into(),
            ));
        }
        let answer = crate::terminal::ask(&confirm_question(review))?;
        if answer.eq_ignore_ascii_case("yes") {
            Ok(())
        } else {
            Err(Error::NotConfirmed("not confirmed; nothing was sent".into()))
        }
    }

    fn sending(&mut self, pending: u64) -> Option<tokio::sync::watch::Receiver<bool>> {
        self.progress = Some(crate::progress::Changes::start(pending));
        // Ctrl-C stops sending; the answers on the way are journaled (see crate::interrupt).
        let (deferred, stop) = crate::interrupt::defer();
        self.deferred = Some(deferred);
        Some(stop)
    }

    fn progress(&mut self, results: &[ChangeResult]) {
        if let Some(progress) = &mut self.progress {
            progress.inc(results.len() as u64);
        }
    }

    fn sent(&mut self) {
        if let Some(progress) = self.progress.take() {
            progress.finish();
        }
        self.deferred = None;
    }
}
