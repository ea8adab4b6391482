//! Options several subcommands share, defined once so that every command spells and documents them alike.

use std::path::{Path, PathBuf};

use crate::apply::gates::{DriftLimit, Thresholds};
use crate::apply::session::GateOptions;
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

/// A percentage flag's value, checked to lie between 0 and 100.
pub fn percent(flag: &str, value: f64) -> Result<f64> {
    if (0.0..=100.0).contains(&value) {
        Ok(value)
    } else {
        Err(crate::Error::Usage(format!("{flag} {value} is not between 0 and 100")))
    }
}

/// clap: a positive number of seconds under a day (`0.5`, `120`).
pub fn seconds(raw: &str) -> std::result::Result<std::time::Duration, String> {
    match raw.parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s < 86_400.0 => Ok(std::time::Duration::from_secs_f64(s)),
        _ => Err(format!("'{raw}' is not a number of seconds (more than 0, less than a day)")),
    }
}

/// `apply`'s gate flags: how much drift and how many removals to allow, and what to accept.
#[derive(Debug, clap::Args)]
pub struct GateFlags {
    /// Refuse the plan when the membership changed since planning (by default only the changes still needed are
    /// applied).
    #[arg(long)]
    pub strict: bool,

    /// Refuse when more members joined and left a group since planning than max(10, P% of the members the plan
    /// was made against) [default: max_drift_percent in the config, else 20].
    #[arg(long, value_name = "P")]
    pub max_drift_percent: Option<f64>,

    /// Apply even when the drift is above the limit (only the changes still needed are sent).
    #[arg(long, conflicts_with = "strict")]
    pub accept_drift: bool,

    /// Apply even when users' UPNs in Graph differ from the plan's; each old → new UPN is listed in the review
    /// and the receipt.
    #[arg(long)]
    pub accept_renames: bool,

    /// Apply even when a group's name in Graph differs from the name the plan gives it.
    #[arg(long)]
    pub accept_group_rename: bool,

    /// Refuse when more removals than this are still to be sent, over all groups [default: max_removals in the
    /// config, else 500].
    #[arg(long, value_name = "N")]
    pub max_removals: Option<u64>,

    /// Refuse when the removals still to be sent from a group are more than this percentage of its current user
    /// members [default: max_removal_percent in the config, else 20].
    #[arg(long, value_name = "P")]
    pub max_removal_percent: Option<f64>,
}

impl GateFlags {
    /// The gates' options: each flag, else the config's `[defaults]`, else the built-in default; the
    /// percentages checked.
    pub fn resolve(&self, config: Option<&Config>) -> Result<GateOptions> {
        let defaults = config.map(|c| &c.defaults);
        let max_drift_percent = percent(
            "--max-drift-percent",
            self.max_drift_percent
                .or_else(|| defaults.and_then(|d| d.max_drift_percent))
                .unwrap_or(DriftLimit::default().max_percent),
        )?;
        let max_removal_percent = percent(
            "--max-removal-percent",
            self.max_removal_percent
                .or_else(|| defaults.and_then(|d| d.max_removal_percent))
                .unwrap_or(Thresholds::default().max_removal_percent),
        )?;
        let max_removals = self
            .max_removals
            .or_else(|| defaults.and_then(|d| d.max_removals))
            .unwrap_or(Thresholds::default().max_removals);
        Ok(GateOptions {
            strict: self.strict,
            thresholds: Thresholds { max_removals, max_removal_percent },
            drift: DriftLimit { max_percent: max_drift_percent, accept: self.accept_drift, strict: self.strict },
            accept_renames: self.accept_renames,
            accept_group_rename: self.accept_group_rename,
        })
    }
}
