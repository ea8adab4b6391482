//! `writeback ledger`: list the plans the ledger has as cancelled, finished or started.

use std::path::PathBuf;

use crate::terminal::{table, Column};
use clap::Args;

use crate::cli::Context;
use crate::error::Result;
use crate::ledger::{Ledger, Listed};
use crate::plan::timestamp;
use crate::terminal::escape;

/// Arguments of `writeback ledger`.
#[derive(Debug, Args)]
pub struct LedgerArgs {
    /// The ledger to list [default: ledger in the config, else the user's state folder].
    #[arg(long, value_name = "DIR")]
    pub ledger: Option<PathBuf>,

    /// Print JSON: one object per plan, with its record and cancellation.
    #[arg(long)]
    pub json: bool,

    /// Whose signatures to trust (to check cancellations; without it they are listed as not checked).
    #[command(flatten)]
    pub trust: crate::cli::options::TrustOptions,
}

/// Runs `writeback ledger`.
pub fn run(args: LedgerArgs, ctx: &Context) -> Result<()> {
    let config = args.trust.load_config(None)?;
    let dir = crate::ledger::resolve_dir(args.ledger.as_deref(), config.as_ref())?;
    let allowed = match args.trust.allowed_signers(config.as_ref()) {
        Some(path) => Some(crate::trust::AllowedSigners::load(&path)?),
        None => None,
    };
    let ledger = Ledger::open_existing(&dir)?;
    let listed = ledger.list(allowed.as_ref(), ctx.now)?;
    if args.json {
        crate::outln!("{}", serde_json::to_string_pretty(&listed).unwrap_or_default());
        return Ok(());
    }
    crate::outln!("Ledger {}: {} plan(s)", ledger.dir().display(), listed.len());
    if listed.is_empty() {
        return Ok(());
    }
    let columns = [
        Column::keep("Plan"),
        Column::keep("State"),
        Column::keep("When"),
        Column::keep("By"),
        Column::shorten("Detail", 1),
    ];
    let rows: Vec<Vec<String>> = listed
        .iter()
        .map(|entry| {
            let [state, when, by, detail] = row(entry);
            vec![entry.plan_id.to_string(), state, when, by, detail]
        })
        .collect();
    let table = table(&columns, &rows, crate::terminal::table_width());
    crate::outln!("{table}");
    Ok(())
}

fn row(entry: &Listed) -> [String; 4] {
    if let Some(c) = &entry.cancellation {
        let note = entry.cancellation_problem.as_deref().map(|p| format!(" [{p}]")).unwrap_or_default();
        let reason = c.reason.as_deref().map(escape).unwrap_or_default();
        return [
            "cancelled".into(),
            timestamp::format(&c.cancelled_at),
            escape(&c.cancelled_by).into_owned(),
            format!("{reason}{note}"),
        ];
    }
    if let Some(problem) = &entry.cancellation_problem {
        return ["cancellation?".into(), String::new(), String::new(), format!("does not verify: {}", escape(problem))];
    }
    match &entry.record {
        Some(r) => match &r.finished {
            Some(f) => [
                format!("finished ({})", f.status.as_str()),
                timestamp::format(&f.at),
                escape(&r.started.by).into_owned(),
                format!("receipt {}", escape(&f.receipt)),
            ],
            None => [
                "started".into(),
                timestamp::format(&r.started.at),
                escape(&r.started.by).into_owned(),
                format!("journal {}", escape(&r.started.journal)),
            ],
        },
        None => ["unknown".into(), String::new(), String::new(), String::new()],
    }
}
