//! `writeback.toml`: the sync mappings (a PoliteMail list to an Entra group) and defaults.
//!
//! ```toml
//! [defaults]
//! key = "keys/demo-planner"          # paths are relative to this file
//! signer = "planner@contoso.example"
//! expires_in = "7d"
//! users = "entra-users.csv"
//!
//! [[sync]]
//! name = "all-staff"
//! group = "6f1c2a34-…"                # an object id (or, with Graph, a display name)
//! group_name = "All Staff"
//! contacts = "politemail-all-staff.csv"   # or: list = "All Staff" (PoliteMail API)
//! members = "entra-members-all-staff.csv" # omit to read the members from Graph
//! ```
//!
//! Command-line flags override the file.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::plan::PlanFormat;

/// The name `writeback` looks for in the current folder when `--config` is not given.
pub const DEFAULT_FILE: &str = "writeback.toml";

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Settings every command and mapping falls back on.
    #[serde(default)]
    pub defaults: Defaults,
    /// The mappings, each a list to a group.
    #[serde(default)]
    pub sync: Vec<SyncMapping>,
    /// The folder the file is in; relative paths are taken from here.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The file itself, for messages.
    #[serde(skip)]
    pub path: PathBuf,
}

/// `[defaults]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// The planner's signing key.
    pub key: Option<PathBuf>,
    /// The principal written into plans (default: the key's comment).
    pub signer: Option<String>,
    /// How long a plan stays valid, e.g. `7d`, `36h`.
    pub expires_in: Option<String>,
    /// `json` or `csv`.
    pub format: Option<PlanFormat>,
    /// Where `plan` writes, when `--out` is not given.
    pub out: Option<PathBuf>,
    /// The Entra "Download users" export shared by all mappings.
    pub users: Option<PathBuf>,
    /// The allowed_signers file for `verify`, `show`, `apply`, `export`.
    pub allowed_signers: Option<PathBuf>,
    /// How many approvals `apply` and `export` require.
    pub require_approvals: Option<u32>,
    /// `apply`'s removal limit.
    pub max_removals: Option<u64>,
    /// `apply`'s removal limit as a percentage of the group.
    pub max_removal_percent: Option<f64>,
    /// The Graph endpoint.
    pub graph_url: Option<String>,
    /// The sign-in endpoint.
    pub login_url: Option<String>,
    /// The PoliteMail OData endpoint.
    pub politemail_url: Option<String>,
}

/// `[[sync]]`: one list to one group.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncMapping {
    /// A short name, for `--sync NAME` and messages.
    pub name: Option<String>,
    /// The group: an object id, or a display name when Graph is used.
    pub group: Option<String>,
    /// The group's display name for the plan when it is read offline.
    pub group_name: Option<String>,
    /// The PoliteMail CSV export.
    pub contacts: Option<PathBuf>,
    /// The PoliteMail list name or id (API).
    pub list: Option<String>,
    /// The Entra "Download members" export; without it, members come from Graph.
    pub members: Option<PathBuf>,
    /// The Entra "Download users" export; without it (and without a default), users are looked up in Graph.
    pub users: Option<PathBuf>,
    /// The email column of the contacts file, when it is not one of the usual names.
    pub email_column: Option<String>,
    /// Plan adds only.
    #[serde(default)]
    pub add_only: bool,
    /// Plan removes only.
    #[serde(default)]
    pub remove_only: bool,
    /// A file of UPNs or object ids never removed.
    pub keep: Option<PathBuf>,
}

impl Config {
    /// Reads a config file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::read(path, e))?;
        let mut config: Config = toml::from_str(&text).map_err(|e| {
            let line = e.span().map(|span| {
                text.as_bytes()[..span.start.min(text.len())].iter().filter(|&&b| b == b'\n').count() as u64 + 1
            });
            let message = format!("{} (see docs/configuration.md)", e.message());
            match line {
                Some(line) => Error::input_at(path, line, message),
                None => Error::input(path, message),
            }
        })?;
        config.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        config.path = path.to_path_buf();
        config.resolve_paths();
        Ok(config)
    }

    /// Loads `explicit`, or `./writeback.toml` when it exists, or nothing.
    pub fn discover(explicit: Option<&Path>) -> Result<Option<Config>> {
        match explicit {
            Some(path) => Config::load(path).map(Some),
            None if Path::new(DEFAULT_FILE).is_file() => Config::load(Path::new(DEFAULT_FILE)).map(Some),
            None => Ok(None),
        }
    }

    fn resolve_paths(&mut self) {
        let base = self.base_dir.clone();
        let fix = |p: &mut Option<PathBuf>| {
            if let Some(path) = p {
                if path.is_relative() {
                    *path = base.join(&*path);
                }
            }
        };
        fix(&mut self.defaults.key);
        fix(&mut self.defaults.out);
        fix(&mut self.defaults.users);
        fix(&mut self.defaults.allowed_signers);
        for sync in &mut self.sync {
            fix(&mut sync.contacts);
            fix(&mut sync.members);
            fix(&mut sync.users);
            fix(&mut sync.keep);
        }
    }
}

/// Parses a duration such as `7d`, `36h`, `90m`, `2w` or `3600s`.
pub fn parse_duration(raw: &str) -> std::result::Result<chrono::Duration, String> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let n: i64 = number.parse().map_err(|_| format!("'{raw}' is not a duration like 7d, 36h or 90m"))?;
    let duration = match unit.trim() {
        "s" => chrono::Duration::try_seconds(n),
        "m" | "min" => chrono::Duration::try_minutes(n),
        "h" => chrono::Duration::try_hours(n),
        "d" | "" => chrono::Duration::try_days(n),
        "w" => chrono::Duration::try_weeks(n),
        _ => None,
    };
    match duration {
        Some(d) if n > 0 => Ok(d),
        _ => Err(format!("'{raw}' is not a positive duration like 7d, 36h or 90m")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("7d").unwrap(), chrono::Duration::days(7));
        assert_eq!(parse_duration("36h").unwrap(), chrono::Duration::hours(36));
        assert_eq!(parse_duration("90m").unwrap(), chrono::Duration::minutes(90));
        assert_eq!(parse_duration("2w").unwrap(), chrono::Duration::weeks(2));
        for bad in ["", "0d", "-1d", "7x", "d", "99999999999999w"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn loads_and_resolves_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("writeback.toml");
        std::fs::write(
            &path,
            "[defaults]\nkey = \"keys/k\"\nexpires_in = \"3d\"\n\n[[sync]]\ngroup = \"x\"\ncontacts = \"list.csv\"\n",
        )
        .unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(config.defaults.key.unwrap(), dir.path().join("keys/k"));
        assert_eq!(config.sync[0].contacts.as_deref().unwrap(), dir.path().join("list.csv"));
    }

    #[test]
    fn unknown_keys_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("writeback.toml");
        std::fs::write(&path, "[defaults]\nkey = \"k\"\nexpires = \"3d\"\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("writeback.toml:3"), "{err}");
    }
}
