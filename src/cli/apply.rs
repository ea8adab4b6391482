//! `writeback apply`.

use crate::cli::Context;
use crate::error::Result;

/// Arguments of `writeback apply`.
#[derive(Debug, clap::Args)]
pub struct ApplyArgs {}

/// Runs `writeback apply`.
pub fn run(_args: ApplyArgs, _ctx: &Context) -> Result<()> {
    Err(crate::cli::not_built("apply"))
}
