//! `writeback doctor`: check a new installation for one role, print a table (or JSON) of the checks, and exit
//! 32 when any fails.

use std::path::PathBuf;

use clap::Args;

use crate::cli::Context;
use crate::doctor::{self, DoctorRequest};
use crate::error::{Error, Result};
use crate::signin::Role;

/// Arguments of `writeback doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Whose setup to check: the planner (reads Graph and PoliteMail, signs plans), the approver (signs
    /// approvals) or the admin (changes group members, signs receipts).
    #[arg(long, value_enum, default_value_t = Role::Planner)]
    pub role: Role,

    /// The signing key to check [default: key in the config].
    #[arg(long, env = "WRITEBACK_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,

    /// The principal the planner signs as [default: signer in the config, else the key's comment].
    #[arg(long, env = "WRITEBACK_SIGNER", value_name = "PRINCIPAL")]
    pub signer: Option<String>,

    /// Print the checks as a JSON array of {check, status, detail, fix}.
    #[arg(long)]
    pub json: bool,

    /// The allowed_signers file and the config file.
    #[command(flatten)]
    pub trust: crate::cli::options::TrustOptions,

    /// Where Microsoft Graph is, and how to sign in.
    #[command(flatten)]
    pub graph: crate::cli::options::GraphOptions,
}

/// Runs `writeback doctor`.
pub fn run(args: DoctorArgs, ctx: &Context) -> Result<()> {
    let request = DoctorRequest {
        role: args.role,
        config: args.trust.config,
        key: args.key,
        signer: args.signer,
        allowed_signers: args.trust.allowed_signers,
        auth: args.graph.auth,
        cloud: args.graph.cloud,
        graph_url: args.graph.graph_url,
        login_url: args.graph.login_url,
        now: ctx.now,
    };
    let report = doctor::run(&request);
    if args.json {
        let json = serde_json::to_string_pretty(&report).map_err(|e| Error::Internal(e.to_string()))?;
        crate::outln!("{json}");
    } else {
        crate::out!("{}", crate::report::doctor::render(&report, crate::terminal::table_width()));
    }
    match report.failures() {
        0 => Ok(()),
        n => Err(Error::DoctorFailed(format!(
            "{n} of {} checks failed for the {} role (see the fix column)",
            report.checks.len(),
            args.role.as_str()
        ))),
    }
}
