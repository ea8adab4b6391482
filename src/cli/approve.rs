//! `writeback approve`.

use crate::cli::Context;
use crate::error::Result;

/// Arguments of `writeback approve`.
#[derive(Debug, clap::Args)]
pub struct ApproveArgs {}

/// Runs `writeback approve`.
pub fn run(_args: ApproveArgs, _ctx: &Context) -> Result<()> {
    Err(crate::cli::not_built("approve"))
}
