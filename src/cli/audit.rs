//! `writeback audit`.

use crate::cli::Context;
use crate::error::Result;

/// Arguments of `writeback audit`.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {}

/// Runs `writeback audit`.
pub fn run(_args: AuditArgs, _ctx: &Context) -> Result<()> {
    Err(crate::cli::not_built("audit"))
}
