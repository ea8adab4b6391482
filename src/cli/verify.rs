//! `writeback verify`.

use crate::cli::Context;
use crate::error::Result;

/// Arguments of `writeback verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {}

/// Runs `writeback verify`.
pub fn run(_args: VerifyArgs, _ctx: &Context) -> Result<()> {
    Err(crate::cli::not_built("verify"))
}
