//! Gathering one mapping's inputs: the contacts (CSV or PoliteMail API), the group and its members (CSV or
//! Graph), the users to resolve against (CSV, shared between mappings, or Graph), and the keep list.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::mapping::{ContactsSource, DirectorySource, Mapping};
use super::services::Services;
use crate::directory::graph::{GraphClient, GraphError, GraphGroup};
use crate::directory::user_table::UserTable;
use crate::directory::{entra_csv, GroupMember};
use crate::error::{Error, Result};
use crate::identity::{Email, ObjectId};
use crate::plan::{self, InputRecord, InputRole};
use crate::reconcile::KeepList;
use crate::source::{politemail_csv, ContactBuffer, ContactList};

/// Users exports already read, by path: mappings that share one file read it once.
#[derive(Default)]
pub struct UserCache {
    read: HashMap<PathBuf, (Arc<UserTable>, InputRecord)>,
}

impl UserCache {
    /// The users of an Entra "Download users" export, read on first use.
    pub fn users(&mut self, path: &Path) -> Result<(Arc<UserTable>, InputRecord)> {
        if let Some(cached) = self.get(path) {
            return Ok(cached);
        }
        let (users, input) = entra_csv::read_user_table(path)?;
        let entry = (Arc::new(users), input);
        self.insert(path, entry.clone());
        Ok(entry)
    }

    /// The users of an export already read.
    pub fn get(&self, path: &Path) -> Option<(Arc<UserTable>, InputRecord)> {
        self.read.get(path).cloned()
    }

    /// Keeps the users read from an export.
    pub fn insert(&mut self, path: &Path, entry: (Arc<UserTable>, InputRecord)) {
        self.read.insert(path.to_path_buf(), entry);
    }
}

/// Everything read for one mapping, ready for [`crate::reconcile::reconcile`].
pub struct GroupInputs {
    /// The group's id.
    pub group_id: ObjectId,
    /// Its display name.
    pub display_name: Option<String>,
    /// The contacts.
    pub contacts: ContactList,
    /// The current members.
    pub members: Vec<GroupMember>,
    /// Users the contacts may resolve to.
    pub users: Arc<UserTable>,
    /// Input records, in role order.
    pub inputs: Vec<InputRecord>,
    /// The tenant, when read from Graph.
    pub tenant_id: Option<String>,
    /// Things the planner should know (e.g. a role-assignable group).
    pub warnings: Vec<String>,
}

/// The mapping's contacts, from its CSV file or the PoliteMail API.
pub fn read_contacts(mapping: &Mapping, services: &mut Services) -> Result<ContactList> {
    Ok(match &mapping.contacts {
        ContactsSource::Csv(path) => politemail_csv::read(path, mapping.email_column.as_deref())?,
        ContactsSource::Api(list) => {
            let pm = services.politemail()?;
            services.block_on(async {
                let list = pm.find_list(list).await?;
                pm.contacts(&list).await
            })??
        }
    })
}

/// [`read_contacts`], each contact kept compactly in `into` as it is read (no [`crate::source::Contact`] per
/// contact); gives the list's input record.
pub fn read_contacts_into(mapping: &Mapping, services: &mut Services, into: &mut ContactBuffer) -> Result<InputRecord> {
    Ok(match &mapping.contacts {
        ContactsSource::Csv(path) => {
            politemail_csv::read_refs(path, mapping.email_column.as_deref(), |contact| into.push(contact))?
        }
        ContactsSource::Api(list) => {
            let pm = services.politemail()?;
            services.block_on(async {
                let list = pm.find_list(list).await?;
                pm.contacts_into(&list, into).await
            })??
        }
    })
}

/// The mapping's group as Microsoft Graph has it, checked to be one writeback may change.
pub struct LiveGroup {
    /// The client it was read with.
    pub graph: GraphClient,
    /// The group.
    pub group: GraphGroup,
    /// The tenant.
    pub tenant_id: String,
    /// Its display name (Graph's, else the mapping's).
    pub display_name: Option<String>,
    /// Things the planner should know (e.g. a role-assignable group).
    pub warnings: Vec<String>,
}

/// Finds the mapping's group in Graph and the tenant; refuses a group Graph cannot change.
pub fn live_group(mapping: &Mapping, services: &mut Services) -> Result<LiveGroup> {
    let graph = services.graph()?;
    let (group, tenant_id) = services.block_on(async {
        Ok::<_, GraphError>((graph.find_group(&mapping.group).await?, graph.tenant_id().await?))
    })??;
    let warnings = group.manageability().map_err(|reason| {
        Error::GroupNotManageable(format!("{}: {reason}; writeback will not plan changes to it", mapping.name))
    })?;
    let display_name = Some(group.display_name.clone()).filter(|n| !n.is_empty()).or(mapping.group_name.clone());
    Ok(LiveGroup { graph, group, tenant_id, display_name, warnings })
}

/// Reads one mapping's inputs from files, Microsoft Graph and the PoliteMail API, as the mapping says.
pub fn gather(mapping: &Mapping, user_cache: &mut UserCache, services: &mut Services) -> Result<GroupInputs> {
    let contacts = read_contacts(mapping, services)?;
    let uses_graph = mapping.members == DirectorySource::Graph || mapping.users == DirectorySource::Graph;
    let mut warnings = Vec::new();
    let mut tenant_id = None;
    let mut live_group_read = None;
    let (group_id, display_name) = if uses_graph {
        let live = live_group(mapping, services)?;
        warnings.extend(live.warnings);
        tenant_id = Some(live.tenant_id);
        let id = live.group.id.clone();
        live_group_read = Some((live.graph, live.group));
        (id, live.display_name)
    } else {
        (offline_group_id(mapping)?, mapping.group_name.clone())
    };
    let live_group = live_group_read;
    // Member users as Graph describes them: with users from Graph, they let removals carry the same flags
    // (disabled, guest) as they would with the users export, which lists every user.
    let mut member_users = Vec::new();
    let (members, members_input) = match (&mapping.members, &live_group) {
        (DirectorySource::Csv(path), _) => entra_csv::read_members(path)?,
        (DirectorySource::Graph, Some((graph, group))) => {
            let (members, users) = services.block_on(graph.list_members_detailed(&group.id))??;
            member_users = users;
            let input = graph.members_input(group, &members);
            (members, input)
        }
        (DirectorySource::Graph, None) => return Err(Error::Internal("Graph members without a Graph group".into())),
    };
    let (users, users_input) = match (&mapping.users, &live_group) {
        (DirectorySource::Csv(path), _) => user_cache.users(path)?,
        (DirectorySource::Graph, Some((graph, _))) => {
            let mut emails: Vec<Email> = contacts.contacts.iter().filter_map(|c| Email::parse(&c.email).ok()).collect();
            emails.sort();
            emails.dedup();
            let mut users = services.block_on(graph.resolve_users(&emails))??;
            let input = graph.users_input(emails.len(), &users);
            let known: HashSet<ObjectId> = users.iter().map(|u| u.id.clone()).collect();
            users.extend(member_users.into_iter().filter(|u| !known.contains(&u.id)));
            let table = UserTable::from_users(&users).map_err(|e| Error::Internal(e.to_string()))?;
            (Arc::new(table), input)
        }
        (DirectorySource::Graph, None) => return Err(Error::Internal("Graph users without a Graph client".into())),
    };
    let inputs = vec![contacts.input.clone(), members_input, users_input];
    Ok(GroupInputs { group_id, display_name, contacts, members, users, inputs, tenant_id, warnings })
}

/// The group's id when it is planned from files (names need Graph).
fn offline_group_id(mapping: &Mapping) -> Result<ObjectId> {
    ObjectId::parse(&mapping.group).map_err(|_| {
        Error::Usage(format!(
            "{}: --group '{}' is not an object id; with both export files the group is named by its object id \
             (names need Graph)",
            mapping.name, mapping.group
        ))
    })
}

/// The mapping's keep list (empty without one) and its input record.
pub fn read_keep_of(mapping: &Mapping) -> Result<(KeepList, Option<InputRecord>)> {
    match &mapping.keep {
        Some(path) => read_keep(path),
        None => Ok((KeepList::default(), None)),
    }
}

/// Reads a keep list file: UTF-8, one UPN or object id a line, `#` comments.
pub fn read_keep(path: &Path) -> Result<(KeepList, Option<InputRecord>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::read(path, e))?;
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() as u64 + 1;
        Error::input_at(path, line, "not UTF-8 text; save the keep list as UTF-8")
    })?;
    let keep = KeepList::parse(text).map_err(|bad| {
        let (line, entry) = &bad[0];
        Error::input_at(path, *line, format!("'{entry}' is neither an object id nor a user principal name"))
    })?;
    let record = InputRecord {
        role: InputRole::Keep,
        description: format!("keep list {}", path.display()),
        sha256: plan::precondition::sha256_hex(&bytes),
    };
    Ok((keep, Some(record)))
}
