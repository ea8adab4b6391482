//! Options several subcommands share, defined once so that every command spells and documents them alike.

use std::path::{Path, PathBuf};

use crate::config::{self, Config, Scope};
use crate::error::{Error, Result};
use crate::signin::{AuthKind, Cloud, SignInSettings};

/// Who is trusted: the allowed_signers file, with the config file as fallback.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TrustOptions {
    /// The allowed_signers file that says who may sign plans, approvals and receipts
    /// [default: allowed_signers in the config].
    #[arg(long, env = "WRITEBACK_ALLOWED_SIGNERS", value_name = "FILE")]
    pub allowed_signers: Option<PathBuf>,

    /// The config file, for its defaults [default: the user's own, ~/.config/writeback/writeback.toml; a
    /// writeback.toml in the working folder or beside the plan is never read].
    #[arg(long, env = "WRITEBACK_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl TrustOptions {
    /// Reads the one config file this command may use (see [`config::discover`]), and says in one line on stderr
    /// which `writeback.toml` files in the working folder or in `beside` (the plan's folder) it ignored.
    pub fn load_config(&self, beside: Option<&Path>) -> Result<Option<Config>> {
        let found = config::discover(Scope::Other, self.config.as_deref(), beside)?;
        if !found.ignored.is_empty() {
            crate::eoutln!("{}", ignored_note(&found.ignored));
        }
        Ok(found.config)
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
                 the config file: --config FILE, or your own {}): it says whose signatures to trust",
                user_config_display()
            ))
        })
    }
}

/// How to sign in to Microsoft Graph and where it is; national clouds and test servers set the URLs.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct GraphOptions {
    /// How to sign in: auto tries token, secret, certificate, workload-identity, managed-identity and azure-cli in
    /// that order and never asks a person [default: auth in the config, else auto].
    #[arg(long, env = "WRITEBACK_AUTH", value_enum, value_name = "KIND")]
    pub auth: Option<AuthKind>,

    /// The Microsoft cloud: sets the sign-in host, Graph's URL and the resource tokens are for together
    /// [default: cloud in the config, else public].
    #[arg(long, value_enum, value_name = "CLOUD")]
    pub cloud: Option<Cloud>,

    /// Microsoft Graph's base URL [default: graph_url in the config, else the cloud's, e.g.
    /// https://graph.microsoft.com/v1.0].
    #[arg(long, env = "WRITEBACK_GRAPH_URL", value_name = "URL")]
    pub graph_url: Option<String>,

    /// The Entra sign-in host [default: login_url in the config, else AZURE_AUTHORITY_HOST, else the cloud's,
    /// e.g. https://login.microsoftonline.com].
    #[arg(long, env = "WRITEBACK_LOGIN_URL", value_name = "URL")]
    pub login_url: Option<String>,
}

impl GraphOptions {
    /// The sign-in settings from the flags, the environment or the config (absent URLs mean the cloud's).
    pub fn resolve(&self, config: Option<&Config>) -> SignInSettings {
        let defaults = config.map(|c| &c.defaults);
        SignInSettings {
            auth: self.auth.or_else(|| defaults.and_then(|d| d.auth)).unwrap_or_default(),
            cloud: self.cloud.or_else(|| defaults.and_then(|d| d.cloud)).unwrap_or_default(),
            graph_url: self.graph_url.clone().or_else(|| defaults.and_then(|d| d.graph_url.clone())),
            login_url: self.login_url.clone().or_else(|| defaults.and_then(|d| d.login_url.clone())),
        }
    }
}

/// The user's own config file as people should read it, e.g. `~/.config/writeback/writeback.toml`.
pub fn user_config_display() -> String {
    match crate::folders::user_config_file() {
        Some(path) => path.display().to_string(),
        None => "~/.config/writeback/writeback.toml".into(),
    }
}

/// The one line that says which `writeback.toml` files were seen and not read.
fn ignored_note(ignored: &[PathBuf]) -> String {
    let names: Vec<String> = ignored.iter().map(|p| p.display().to_string()).collect();
    format!(
        "note: ignoring {}: only `writeback plan` reads a writeback.toml from the working folder; this command reads \
         --config FILE, WRITEBACK_CONFIG or {}",
        names.join(" and "),
        user_config_display()
    )
}
