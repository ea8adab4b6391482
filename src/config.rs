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
//!
//! Which file is read ([`discover`]): `--config F` / `WRITEBACK_CONFIG` when given, otherwise, for `plan` only,
//! `./writeback.toml`, otherwise the user's own file ([`crate::folders::user_config_file`]). Exactly one file,
//! never two merged. Every command except `plan` ignores a `writeback.toml` in the working folder or beside the
//! plan: that folder is where plans are handed over, and whoever can drop a file there must not be able to
//! choose the sign-in endpoint, the allowed_signers file or the removal limits of the admin's commands.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::plan::PlanFormat;

/// The name of the config file: the one `plan` looks for in the working folder when `--config` is not given,
/// and the one every other command ignores there.
pub const DEFAULT_FILE: &str = crate::folders::CONFIG_FILE_NAME;

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
    /// The longest a plan may live (`expires_at - created_at`), e.g. `30d`: `plan --expires-in` may not ask for
    /// more, and `verify`, `approve`, `export` and `apply` refuse a plan that does (default 30 days).
    pub max_plan_lifetime: Option<String>,
    /// `apply`'s removal limit.
    pub max_removals: Option<u64>,
    /// `apply`'s removal limit as a percentage of the group.
    pub max_removal_percent: Option<f64>,
    /// The Graph endpoint.
    pub graph_url: Option<String>,
    /// The sign-in endpoint.
    pub login_url: Option<String>,
    /// How to sign in to Graph (`auto`, `token`, `secret`, `certificate`, `workload-identity`,
    /// `managed-identity`, `azure-cli`, `device-code`).
    pub auth: Option<crate::signin::AuthKind>,
    /// The Microsoft cloud (`public`, `usgov`, `usgov-dod`, `china`).
    pub cloud: Option<crate::signin::Cloud>,
    /// The PoliteMail OData endpoint.
    pub politemail_url: Option<String>,
    /// `apply`'s ledger of started, finished and cancelled plans (default: the user's state folder).
    pub ledger: Option<PathBuf>,
    /// `apply`'s drift limit, as a percentage of the group's members when planned (default 20).
    pub max_drift_percent: Option<f64>,
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
        fix(&mut self.defaults.ledger);
        for sync in &mut self.sync {
            fix(&mut sync.contacts);
            fix(&mut sync.members);
            fix(&mut sync.users);
            fix(&mut sync.keep);
        }
    }
}

/// `max_plan_lifetime` from the config, or the default of 30 days ([`crate::trust::DEFAULT_MAX_PLAN_LIFETIME`]).
/// A value that is not a duration is an input error naming the config file.
pub fn max_plan_lifetime(config: Option<&Config>) -> Result<chrono::TimeDelta> {
    match config.and_then(|c| c.defaults.max_plan_lifetime.as_deref().map(|raw| (c, raw))) {
        None => Ok(crate::trust::DEFAULT_MAX_PLAN_LIFETIME),
        Some((c, raw)) => parse_duration(raw).map_err(|e| Error::input(&c.path, format!("max_plan_lifetime: {e}"))),
    }
}

/// Which commands a config is discovered for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `writeback plan`: the planner's own folder, so `./writeback.toml` is read when no file is given.
    Planner,
    /// Every other command: only `--config F` / `WRITEBACK_CONFIG`, else the user's own config file.
    Other,
}

/// Where the config in use came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// `--config FILE` or `WRITEBACK_CONFIG`.
    Given(PathBuf),
    /// The user's own config file ([`crate::folders::user_config_file`]).
    User(PathBuf),
    /// `./writeback.toml` (`plan` only).
    WorkingFolder(PathBuf),
}

impl ConfigSource {
    /// The file.
    pub fn path(&self) -> &Path {
        match self {
            ConfigSource::Given(p) | ConfigSource::User(p) | ConfigSource::WorkingFolder(p) => p,
        }
    }

    /// How it was chosen, for people: "given with --config or WRITEBACK_CONFIG", …
    pub fn describe(&self) -> &'static str {
        match self {
            ConfigSource::Given(_) => "given with --config or WRITEBACK_CONFIG",
            ConfigSource::User(_) => "the user's own config file",
            ConfigSource::WorkingFolder(_) => "writeback.toml in the working folder (plan only)",
        }
    }
}

/// What discovery found: the config in use (if any), where it came from, and the `writeback.toml` files it saw
/// and did not read.
#[derive(Debug, Clone, Default)]
pub struct Discovered {
    /// The config in use.
    pub config: Option<Config>,
    /// Where it came from.
    pub source: Option<ConfigSource>,
    /// `writeback.toml` files in the working folder or beside the plan that were seen and not read.
    pub ignored: Vec<PathBuf>,
}

/// Finds the one config file a command reads (never two merged):
/// - `explicit` (`--config F` / `WRITEBACK_CONFIG`) when given;
/// - for [`Scope::Planner`], else `./writeback.toml` when it exists;
/// - else the user's own file ([`crate::folders::user_config_file`]) when it exists;
/// - else none.
///
/// For [`Scope::Other`] a `writeback.toml` in the working folder or in `beside` (the plan's or archive's folder)
/// is never read: it is listed in [`Discovered::ignored`], so the command can say so.
pub fn discover(scope: Scope, explicit: Option<&Path>, beside: Option<&Path>) -> Result<Discovered> {
    let user = crate::folders::user_config_file();
    discover_in(scope, explicit, beside, Path::new("."), user.as_deref())
}

/// [`discover`] with the working folder and the user's file given (tests).
fn discover_in(
    scope: Scope,
    explicit: Option<&Path>,
    beside: Option<&Path>,
    working: &Path,
    user: Option<&Path>,
) -> Result<Discovered> {
    let here = if working == Path::new(".") { PathBuf::from(DEFAULT_FILE) } else { working.join(DEFAULT_FILE) };
    let here = here.as_path();
    let source = match (explicit, scope) {
        (Some(path), _) => Some(ConfigSource::Given(path.to_path_buf())),
        (None, Scope::Planner) if here.is_file() => Some(ConfigSource::WorkingFolder(here.to_path_buf())),
        (None, _) => user.filter(|p| p.is_file()).map(|p| ConfigSource::User(p.to_path_buf())),
    };
    let config = source.as_ref().map(|s| Config::load(s.path())).transpose()?;
    let mut ignored = Vec::new();
    if scope == Scope::Other {
        let in_use = source.as_ref().and_then(|s| s.path().canonicalize().ok());
        let mut candidates = vec![here.to_path_buf()];
        if let Some(dir) = beside {
            candidates.push(dir.join(DEFAULT_FILE));
        }
        for candidate in candidates {
            let Ok(real) = candidate.canonicalize() else { continue };
            if !real.is_file() || in_use.as_ref() == Some(&real) {
                continue;
            }
            if !ignored.iter().any(|p: &PathBuf| p.canonicalize().ok().as_ref() == Some(&real)) {
                ignored.push(if candidate.is_relative() && !candidate.starts_with(".") {
                    Path::new(".").join(candidate)
                } else {
                    candidate
                });
            }
        }
    }
    Ok(Discovered { config, source, ignored })
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
    fn sign_in_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("writeback.toml");
        std::fs::write(&path, "[defaults]\nauth = \"azure-cli\"\ncloud = \"usgov-dod\"\n").unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(config.defaults.auth, Some(crate::signin::AuthKind::AzureCli));
        assert_eq!(config.defaults.cloud, Some(crate::signin::Cloud::UsgovDod));
        std::fs::write(&path, "[defaults]\nauth = \"password\"\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("writeback.toml:2") && err.contains("azure-cli"), "{err}");
    }

    #[test]
    fn unknown_keys_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("writeback.toml");
        std::fs::write(&path, "[defaults]\nkey = \"k\"\nexpires = \"3d\"\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("writeback.toml:3"), "{err}");
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn only_plan_reads_the_working_folder_and_nothing_is_merged() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("handoff");
        let user = dir.path().join("home/.config/writeback/writeback.toml");
        let given = dir.path().join("given.toml");
        write(&work.join(DEFAULT_FILE), "[defaults]\nlogin_url = \"http://decoy\"\n");
        write(&user, "[defaults]\nmax_removals = 7\n");
        write(&given, "[defaults]\nmax_removals = 9\n");

        let d = discover_in(Scope::Other, None, Some(&work), &work, Some(&user)).unwrap();
        assert_eq!(d.source, Some(ConfigSource::User(user.clone())));
        let config = d.config.unwrap();
        assert_eq!((config.defaults.max_removals, config.defaults.login_url), (Some(7), None));
        // Seen twice (working folder and beside the plan), listed once.
        assert_eq!(d.ignored, vec![work.join(DEFAULT_FILE)]);

        let d = discover_in(Scope::Other, Some(&given), None, &work, Some(&user)).unwrap();
        assert_eq!(d.source, Some(ConfigSource::Given(given.clone())));
        assert_eq!(d.config.unwrap().defaults.max_removals, Some(9));
        assert_eq!(d.ignored.len(), 1);

        // Given explicitly, the working folder's file is the one in use, not ignored.
        let d = discover_in(Scope::Other, Some(&work.join(DEFAULT_FILE)), None, &work, Some(&user)).unwrap();
        assert!(d.ignored.is_empty());

        let d = discover_in(Scope::Planner, None, None, &work, Some(&user)).unwrap();
        assert_eq!(d.source, Some(ConfigSource::WorkingFolder(work.join(DEFAULT_FILE))));
        assert!(d.ignored.is_empty());

        let empty = dir.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        let d = discover_in(Scope::Planner, None, None, &empty, Some(&user)).unwrap();
        assert_eq!(d.source, Some(ConfigSource::User(user.clone())));
        let d = discover_in(Scope::Other, None, Some(&work), &empty, Some(&dir.path().join("none.toml"))).unwrap();
        assert!(d.config.is_none() && d.source.is_none());
        assert_eq!(d.ignored, vec![work.join(DEFAULT_FILE)]);
    }
}
