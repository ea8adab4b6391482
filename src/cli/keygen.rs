//! `writeback keygen`.

use crate::cli::Context;
use crate::error::Result;

/// Arguments of `writeback keygen`.
#[derive(Debug, clap::Args)]
pub struct KeygenArgs {}

/// Runs `writeback keygen`.
pub fn run(_args: KeygenArgs, _ctx: &Context) -> Result<()> {
    Err(crate::cli::not_built("keygen"))
}
