//! Options several subcommands share, defined once so that every command spells and documents them alike.

use std::path::PathBuf;

use crate::config::Config;
use crate::error::{Error, Result};

/// Who is trusted: the allowed_signers file, with the config file as fallback.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TrustOptions {
    /// The allowed_signers file that says who may sign plans, approvals and receipts
    /// [default: allowed_signers in the config].
    #[arg(long, env = "WRITEBACK_ALLOWED_SIGNERS", value_name = "FILE")]
    pub allowed_signers: Option<PathBuf>,

    /// The config file, for its defaults [default: ./writeback.toml when it exists].
    #[arg(long, env = "WRITEBACK_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl TrustOptions {
    /// Reads the config file, if there is one.
    pub fn load_config(&self) -> Result<Option<Config>> {
        Config::discover(self.config.as_deref())
    }

    /// The allowed_signers file from the flag, the environment or the config, if any.
    pub fn allowed_signers(&self, config: Option<&Config>) -> Option<PathBuf> {
        self.allowed_signers.clone().or_else(|| config.and_then(|c| c.defaults.allowed_signers.clone()))
    }

    /// Like [`TrustOptions::allowed_signers`], for commands that cannot work without one.
    pub fn require_allowed_signers(&self, config: Option<&Config>, command: &str) -> Result<PathBuf> {
        self.allowed_signers(config).ok_or_else(|| {
            Error::Usage(format!(
                "{command} needs --allowed-signers FILE (or WRITEBACK_ALLOWED_SIGNERS, or allowed_signers in \
                 writeback.toml): it says whose signatures to trust"
            ))
        })
    }
}

/// Where Microsoft Graph and its sign-in endpoint are; national clouds and test servers set both.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct GraphOptions {
    /// Microsoft Graph's base URL [default: graph_url in the config, else https://graph.microsoft.com/v1.0].
    #[arg(long, env = "WRITEBACK_GRAPH_URL", value_name = "URL")]
    pub graph_url: Option<String>,

    /// The Entra sign-in endpoint [default: login_url in the config, else https://login.microsoftonline.com].
    #[arg(long, env = "WRITEBACK_LOGIN_URL", value_name = "URL")]
    pub login_url: Option<String>,
}

impl GraphOptions {
    /// The Graph and sign-in URLs from the flags, the environment or the config (`None` means the default).
    pub fn resolve(&self, config: Option<&Config>) -> (Option<String>, Option<String>) {
        let defaults = config.map(|c| &c.defaults);
        (
            self.graph_url.clone().or_else(|| defaults.and_then(|d| d.graph_url.clone())),
            self.login_url.clone().or_else(|| defaults.and_then(|d| d.login_url.clone())),
        )
    }
}
