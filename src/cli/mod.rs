//! The command line: one file per subcommand. Each parses its arguments, calls the library, and prints.
//!
//! Results go to stdout (tables, or JSON with `--json`); progress, warnings and errors go to stderr.

pub mod apply;
pub mod approve;
pub mod audit;
pub mod cancel;
pub mod check;
pub mod completions;
pub mod doctor;
pub mod export;
pub mod keygen;
pub mod ledger;
pub mod man;
pub mod options;
pub mod plan;
pub mod report;
pub mod show;
pub mod verify;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};

use crate::error::{exit, Result};

/// Signed, reviewable changesets from PoliteMail lists to Microsoft Entra ID groups.
#[derive(Debug, Parser)]
#[command(name = "writeback", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Show more detail on stderr (-v: each request and retry; -vv: debugging).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
// Parsed once per process; boxing the larger argument structs would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Compare a PoliteMail list with an Entra group and write a signed plan of adds and removes.
    Plan(plan::PlanArgs),
    /// Review a plan: summary, signature status and tables of every change.
    Show(show::ShowArgs),
    /// Check a plan's signature, signer, format version and expiry.
    Verify(verify::VerifyArgs),
    /// Make an Ed25519 signing key pair and print its allowed_signers line.
    Keygen(keygen::KeygenArgs),
    /// Apply a reviewed, signed plan to Microsoft Graph.
    Apply(apply::ApplyArgs),
    /// Turn a verified plan into Entra bulk-operation CSVs or a PowerShell script.
    Export(export::ExportArgs),
    /// Compare each group's current membership with the plan's target.
    Check(check::CheckArgs),
    /// Add an approval signature to a plan.
    Approve(approve::ApproveArgs),
    /// Verify an archive of plans, approvals, receipts and journals.
    Audit(audit::AuditArgs),
    /// Write a self-contained HTML report of a plan and its outcome.
    Report(report::ReportArgs),
    /// Record a signed cancellation of a plan in the ledger, so that apply refuses it.
    Cancel(cancel::CancelArgs),
    /// List the plans the ledger has as cancelled, finished or started.
    Ledger(ledger::LedgerArgs),
    /// Print a shell completion script (bash, zsh, fish, powershell, elvish).
    Completions(completions::CompletionsArgs),
    /// Write man pages for writeback and each subcommand.
    Man(man::ManArgs),
    /// Check a new installation for one role: config, sign-in, permissions, groups, keys, clock.
    Doctor(doctor::DoctorArgs),
}

/// What every command gets from the process: verbosity and the current time (passed in, so the library never
/// reads the clock itself).
#[derive(Debug, Clone)]
pub struct Context {
    /// The `-v` count.
    pub verbose: u8,
    /// The time the command started.
    pub now: DateTime<Utc>,
}

/// Parses the command line, runs the command and returns the process exit code.
pub fn run() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { exit::USAGE } else { exit::OK };
            let _ = e.print();
            return code;
        }
    };
    init_logging(cli.verbose);
    crate::interrupt::install();
    let ctx = Context { verbose: cli.verbose, now: Utc::now() };
    let result = dispatch(cli.command, &ctx);
    // A reader that closed the pipe early (`| head`) is not a failure; a disk that refused the output is.
    let result = match (result, crate::terminal::stdout_failure()) {
        (Ok(_), Some(why)) => Err(crate::Error::Internal(format!("cannot write the output: {why}"))),
        (result, _) => result,
    };
    match result {
        // A success-like status (`plan --detailed-exitcode`'s CHANGES) is no error: nothing more to say.
        Ok(code) => code,
        Err(e) => {
            crate::eoutln!("error: {e}");
            e.exit_code()
        }
    }
}

/// Runs the command; returns the exit status of a command that succeeded.
fn dispatch(command: Command, ctx: &Context) -> Result<i32> {
    let done = match command {
        Command::Plan(args) => return plan::run(args, ctx),
        Command::Show(args) => show::run(args, ctx),
        Command::Verify(args) => verify::run(args, ctx),
        Command::Keygen(args) => keygen::run(args, ctx),
        Command::Apply(args) => apply::run(args, ctx),
        Command::Export(args) => export::run(args, ctx),
        Command::Check(args) => check::run(args, ctx),
        Command::Approve(args) => approve::run(args, ctx),
        Command::Audit(args) => audit::run(args, ctx),
        Command::Report(args) => report::run(args, ctx),
        Command::Cancel(args) => cancel::run(args, ctx),
        Command::Ledger(args) => ledger::run(args, ctx),
        Command::Completions(args) => completions::run(args, ctx),
        Command::Man(args) => man::run(args, ctx),
        Command::Doctor(args) => doctor::run(args, ctx),
    };
    done.map(|()| exit::OK)
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "writeback=info",
        _ => "writeback=debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("WRITEBACK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let colour = colour(std::io::IsTerminal::is_terminal(&std::io::stderr()), std::env::var_os("NO_COLOR"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .try_init();
}

/// Whether diagnostics on stderr may use ANSI colour: only on a terminal, and not when `NO_COLOR` is set to
/// anything but the empty string (no-color.org).
fn colour(stderr_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::colour;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some("".into())));
        assert!(!colour(true, Some("1".into())));
        assert!(!colour(false, None));
    }
}
