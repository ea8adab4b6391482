//! `writeback man [--out DIR]`: a man page for writeback and one for each subcommand (`writeback-plan.1`, …),
//! generated from the same flag definitions as `--help` (clap_mangen).

use std::path::PathBuf;

use clap::{Args, CommandFactory};

use crate::cli::{Cli, Context};
use crate::error::{Error, Result};

/// Arguments of `writeback man`.
#[derive(Debug, Args)]
#[command(after_help = "Install them, for example:\n  \
    writeback man --out ~/.local/share/man/man1   (then: man writeback-apply)")]
pub struct ManArgs {
    /// The folder to write the pages into; it is created when missing.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub out: PathBuf,
}

/// Runs `writeback man`: writes each page (atomically) and prints its path.
pub fn run(args: ManArgs, _ctx: &Context) -> Result<()> {
    let pages = pages(Cli::command()).map_err(|e| Error::Internal(format!("cannot render the man pages: {e}")))?;
    std::fs::create_dir_all(&args.out).map_err(|e| Error::Io {
        path: args.out.clone(),
        action: "create the folder",
        source: e,
    })?;
    for (name, page) in pages {
        let path = args.out.join(name);
        crate::atomic_write::write(&path, &page)?;
        crate::outln!("{}", path.display());
    }
    Ok(())
}

/// The page of `command` and of each of its subcommands (not `help`), as (file name, roff).
fn pages(command: clap::Command) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut command = command.disable_help_subcommand(true);
    command.build();
    let mut pages = Vec::new();
    for page in std::iter::once(&command).chain(command.get_subcommands().filter(|s| !s.is_hide_set())) {
        let man = clap_mangen::Man::new(page.clone());
        let mut roff = Vec::new();
        man.render(&mut roff)?;
        pages.push((man.get_filename(), roff));
    }
    Ok(pages)
}
