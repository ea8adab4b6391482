//! `writeback show`.

use crate::cli::Context;
use crate::error::Result;

/// Arguments of `writeback show`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {}

/// Runs `writeback show`.
pub fn run(_args: ShowArgs, _ctx: &Context) -> Result<()> {
    Err(crate::cli::not_built("show"))
}
