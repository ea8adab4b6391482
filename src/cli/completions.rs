//! `writeback completions SHELL`: the shell completion script, generated from the same flag definitions as
//! `--help` (clap_complete), on stdout.

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use crate::cli::{Cli, Context};
use crate::error::Result;

/// Arguments of `writeback completions`.
#[derive(Debug, Args)]
#[command(after_help = "Install it, for example:\n  \
    bash:       writeback completions bash > ~/.local/share/bash-completion/completions/writeback\n  \
    zsh:        writeback completions zsh > ~/.zfunc/_writeback   (with fpath+=~/.zfunc before compinit)\n  \
    fish:       writeback completions fish > ~/.config/fish/completions/writeback.fish\n  \
    PowerShell: writeback completions powershell >> $PROFILE\n  \
    elvish:     writeback completions elvish >> ~/.config/elvish/rc.elv")]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: Shell,
}

/// Runs `writeback completions`.
pub fn run(args: CompletionsArgs, _ctx: &Context) -> Result<()> {
    let mut command = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "writeback", &mut script);
    crate::out!("{}", String::from_utf8_lossy(&script));
    Ok(())
}
