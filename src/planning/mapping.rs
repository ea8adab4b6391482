//! What to plan: the config's `[[sync]]` mappings merged with the command line's flags into fully specified
//! [`Mapping`]s. Pure: no file is read here (the config was read by the caller).

use std::path::PathBuf;

use crate::config::{Config, SyncMapping};
use crate::error::{Error, Result};

/// Where a mapping's contacts come from.
#[derive(Debug, Clone)]
pub enum ContactsSource {
    /// A PoliteMail CSV export.
    Csv(PathBuf),
    /// The PoliteMail API, by list name or id.
    Api(String),
}

/// Where a mapping's directory data comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectorySource {
    /// An Entra admin center export.
    Csv(PathBuf),
    /// Microsoft Graph.
    Graph,
}

/// One fully specified mapping, after the config and the flags are merged.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// For messages.
    pub name: String,
    /// The group's id or (with Graph) name.
    pub group: String,
    /// The display name to record, when known.
    pub group_name: Option<String>,
    /// The list.
    pub contacts: ContactsSource,
    /// The current members.
    pub members: DirectorySource,
    /// The users to resolve against.
    pub users: DirectorySource,
    /// The email column override.
    pub email_column: Option<String>,
    /// Direction and keep list.
    pub add_only: bool,
    /// Direction.
    pub remove_only: bool,
    /// The keep list file.
    pub keep: Option<PathBuf>,
}

/// The flags of `writeback plan` that describe mappings (each overrides the config's value).
#[derive(Debug, Clone, Default)]
pub struct MappingFlags {
    /// `--sync NAME`, repeatable: plan only these mappings of the config.
    pub syncs: Vec<String>,
    /// `--contacts FILE`.
    pub contacts: Option<PathBuf>,
    /// `--list NAME|ID`.
    pub list: Option<String>,
    /// `--members FILE`.
    pub members: Option<PathBuf>,
    /// `--users FILE`.
    pub users: Option<PathBuf>,
    /// `--group ID|NAME`.
    pub group: Option<String>,
    /// `--group-name NAME`.
    pub group_name: Option<String>,
    /// `--email-column COLUMN`.
    pub email_column: Option<String>,
    /// `--keep FILE`.
    pub keep: Option<PathBuf>,
    /// `--add-only`.
    pub add_only: bool,
    /// `--remove-only`.
    pub remove_only: bool,
}

/// Merges the config's mappings with the flags.
pub fn merge(flags: &MappingFlags, config: Option<&Config>) -> Result<Vec<Mapping>> {
    let defaults = config.map(|c| c.defaults.clone()).unwrap_or_default();
    let adhoc = flags.group.is_some() || flags.contacts.is_some() || flags.list.is_some();
    let mut selected: Vec<SyncMapping> = match config {
        Some(config) if !flags.syncs.is_empty() => select(config, &flags.syncs)?,
        Some(config) if !adhoc => config.sync.clone(),
        _ => vec![SyncMapping::default()],
    };
    if selected.is_empty() {
        return Err(Error::Usage(
            "nothing to plan: give --group and --contacts (or --list), or a config with [[sync]] entries".into(),
        ));
    }
    if adhoc && selected.len() > 1 {
        return Err(Error::Usage(
            "--group, --contacts and --list describe one mapping, but the config has several: pick one with --sync NAME"
                .into(),
        ));
    }
    let mut out = Vec::new();
    for (index, sync) in selected.iter_mut().enumerate() {
        out.push(one(flags, sync, index, &defaults)?);
    }
    let mut seen = std::collections::HashSet::new();
    for mapping in &out {
        if !seen.insert(mapping.group.to_lowercase()) {
            return Err(Error::Usage(format!(
                "group {} appears in two mappings; one plan holds each group once",
                mapping.group
            )));
        }
    }
    Ok(out)
}

/// The config's mappings named by `--sync`, in the order given.
fn select(config: &Config, names: &[String]) -> Result<Vec<SyncMapping>> {
    let mut out = Vec::new();
    for name in names {
        let found = config.sync.iter().find(|s| s.name.as_deref() == Some(name.as_str())).ok_or_else(|| {
            let names: Vec<&str> = config.sync.iter().filter_map(|s| s.name.as_deref()).collect();
            Error::Usage(format!(
                "{} has no [[sync]] named '{name}' (it has: {})",
                config.path.display(),
                names.join(", ")
            ))
        })?;
        out.push(found.clone());
    }
    Ok(out)
}

/// One mapping: the flags over the `[[sync]]` entry over the `[defaults]`.
fn one(flags: &MappingFlags, sync: &SyncMapping, index: usize, defaults: &crate::config::Defaults) -> Result<Mapping> {
    let name = sync.name.clone().unwrap_or_else(|| format!("mapping {}", index + 1));
    let group = flags.group.clone().or(sync.group.clone()).ok_or_else(|| {
        Error::Usage(format!("{name}: no group: pass --group ID (or set group in the [[sync]] entry)"))
    })?;
    let contacts = match (&flags.contacts, &flags.list) {
        (Some(path), _) => ContactsSource::Csv(path.clone()),
        (None, Some(list)) => ContactsSource::Api(list.clone()),
        (None, None) => match (&sync.contacts, &sync.list) {
            (Some(path), _) => ContactsSource::Csv(path.clone()),
            (None, Some(list)) => ContactsSource::Api(list.clone()),
            (None, None) => {
                return Err(Error::Usage(format!(
                    "{name}: no list: pass --contacts FILE (PoliteMail export) or --list NAME (PoliteMail API)"
                )))
            }
        },
    };
    let members =
        flags.members.clone().or(sync.members.clone()).map(DirectorySource::Csv).unwrap_or(DirectorySource::Graph);
    let users = flags
        .users
        .clone()
        .or(sync.users.clone())
        .or(defaults.users.clone())
        .map(DirectorySource::Csv)
        .unwrap_or(DirectorySource::Graph);
    let add_only = flags.add_only || (sync.add_only && !flags.remove_only);
    let remove_only = flags.remove_only || (sync.remove_only && !flags.add_only);
    if add_only && remove_only {
        return Err(Error::Usage(format!("{name}: add_only and remove_only cannot both be set")));
    }
    Ok(Mapping {
        name,
        group,
        group_name: flags.group_name.clone().or(sync.group_name.clone()),
        contacts,
        members,
        users,
        email_column: flags.email_column.clone().or(sync.email_column.clone()),
        add_only,
        remove_only,
        keep: flags.keep.clone().or(sync.keep.clone()),
    })
}
