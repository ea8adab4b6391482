//! `writeback check`.

use crate::cli::Context;
use crate::error::Result;

/// Arguments of `writeback check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {}

/// Runs `writeback check`.
pub fn run(_args: CheckArgs, _ctx: &Context) -> Result<()> {
    Err(crate::cli::not_built("check"))
}
