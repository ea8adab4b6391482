//! `writeback export`.

use crate::cli::Context;
use crate::error::Result;

/// Arguments of `writeback export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {}

/// Runs `writeback export`.
pub fn run(_args: ExportArgs, _ctx: &Context) -> Result<()> {
    Err(crate::cli::not_built("export"))
}
