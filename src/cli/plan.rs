//! `writeback plan`.

use crate::cli::Context;
use crate::error::Result;

/// Arguments of `writeback plan`.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {}

/// Runs `writeback plan`.
pub fn run(_args: PlanArgs, _ctx: &Context) -> Result<()> {
    Err(crate::cli::not_built("plan"))
}
