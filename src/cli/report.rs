//! `writeback report`.

use crate::cli::Context;
use crate::error::Result;

/// Arguments of `writeback report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {}

/// Runs `writeback report`.
pub fn run(_args: ReportArgs, _ctx: &Context) -> Result<()> {
    Err(crate::cli::not_built("report"))
}
