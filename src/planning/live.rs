//! The path for a mapping whose members and users both come from Microsoft Graph: member pages and user pages are
//! taken into one compact [`UserTable`] as they arrive, never held as one value per member or user, and then go
//! through the same [`Reconciler`] and [`MemberSet`] as the file path. The plan is the one [`super::inputs::gather`]
//! and [`crate::reconcile::reconcile`] make from the same reads, byte for byte.
//!
//! What is kept per member user is its position in the table (its fields are the same Graph object as the user
//! the table holds); per resolved user, its position and its proxy addresses as JSON (the table keeps only the
//! `smtp:` ones, and the plan's input hash covers all of them). Other members (groups, devices, contacts) are few
//! and kept whole.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use super::inputs::{live_group, read_contacts, read_keep_of, LiveGroup};
use super::mapping::{DirectorySource, Mapping};
use super::services::Services;
use super::{reconcile_options, MappingPlan};
use crate::directory::graph::{canonical_member_row, canonical_user_row, CanonicalUser};
use crate::directory::user_table::UserTable;
use crate::directory::{DirectoryUser, GroupMember, MemberKind, MemberRef};
use crate::error::{Error, Result};
use crate::identity::{Email, ObjectId};
use crate::phases::Phases;
use crate::reconcile::{MemberSet, Reconciler, UserIndex};
use crate::source::ContactBuffer;

/// A member in the order Graph listed it: a user at a position of the table, or another object kept whole.
#[derive(Clone, Copy)]
enum Slot {
    User(u32),
    Other(u32),
}

/// The members as read: their order, the member users in `table`, the other objects whole.
struct Members {
    slots: Vec<Slot>,
    others: Vec<GroupMember>,
}

/// The users resolved from the list's addresses: their positions in the table and their proxy addresses (JSON).
#[derive(Default)]
struct Resolved {
    /// (object id, position in the table, end of the user's proxy addresses in `proxies`), in arrival order.
    users: Vec<(u128, u32, usize)>,
    proxies: Vec<u8>,
    /// A user that came back twice, or whose member row says something else (it changed between the reads).
    conflict: bool,
}

/// Plans a mapping whose members and users are both read from Graph, streaming both into one [`UserTable`];
/// `None` when they are not (the caller then takes the general path).
pub fn plan_from_graph(mapping: &Mapping, services: &mut Services, phases: &mut Phases) -> Result<Option<MappingPlan>> {
    if mapping.members != DirectorySource::Graph || mapping.users != DirectorySource::Graph {
        return Ok(None);
    }
    let list = read_contacts(mapping, services)?;
    let mut contacts = ContactBuffer::new();
    list.contacts.iter().for_each(|c| contacts.push(c.as_ref()));
    let contacts_input = list.input;
    drop(list.contacts);
    let LiveGroup { graph, group, tenant_id, display_name, warnings } = live_group(mapping, services)?;
    phases.lap("list and group");

    let mut table = UserTable::new();
    let mut members = Members { slots: Vec::new(), others: Vec::new() };
    let mut table_error = None;
    services.block_on(graph.each_member_detailed(&group.id, |member, user| match user {
        Some(user) => {
            let position = table.len() as u32;
            match table.push_user(&user) {
                Ok(()) => members.slots.push(Slot::User(position)),
                Err(e) => table_error = Some(e),
            }
        }
        None => {
            members.slots.push(Slot::Other(members.others.len() as u32));
            members.others.push(member);
        }
    }))??;
    if let Some(e) = table_error {
        return Err(Error::Internal(e.to_string()));
    }
    let members_input = graph.members_input_of(&group, members.slots.len(), members_sha256(&members, &table));
    phases.lap("members: read pages into the table (streamed)");

    let mut emails: Vec<Email> = contacts.iter().filter_map(|c| Email::parse(c.email).ok()).collect();
    emails.sort();
    emails.dedup();
    let member_users = table.len();
    let mut position_of: HashMap<u128, u32> = HashMap::with_capacity(member_users);
    for (position, &id) in table.ids().iter().enumerate() {
        position_of.insert(id, position as u32);
    }
    let mut resolved = Resolved::default();
    services.block_on(graph.each_resolved_user(&emails, |user| {
        if let Err(e) = take_resolved(&mut table, &mut position_of, member_users, &mut resolved, &user) {
            table_error = Some(e);
        }
    }))??;
    if let Some(e) = table_error {
        return Err(Error::Internal(e.to_string()));
    }
    drop(position_of);
    if resolved.conflict {
        // A user changed between the reads (or came back twice, differently): plan from whole reads instead, which
        // says what the last read saw.
        tracing::info!("Microsoft Graph: a user changed while it was read; reading the group and users again whole");
        return Ok(None);
    }
    let users_input = graph.users_input_of(emails.len(), resolved.users.len(), users_sha256(&resolved, &table));
    drop(emails);
    phases.lap("users: resolve the list's addresses into the table (streamed)");

    let index = UserIndex::new(&table);
    let mut reconciler = Reconciler::new(&index);
    reconciler.reserve(contacts.len(), 0);
    reconciler.add_contact_refs(contacts.iter());
    let contacts_count = contacts.len() as u64;
    drop(contacts);
    let mut set = MemberSet::new(&index);
    set.reserve(members.slots.len());
    for slot in &members.slots {
        match *slot {
            Slot::User(position) => {
                if let Some(member) = member_of(&table, position) {
                    set.add(member);
                }
            }
            Slot::Other(at) => {
                if let Some(member) = members.others.get(at as usize) {
                    set.add(member.as_ref());
                }
            }
        }
    }
    phases.lap("index, resolve, members");
    let (keep, keep_record) = read_keep_of(mapping)?;
    let result = reconciler.finish_with(set, &reconcile_options(mapping, keep));
    phases.lap("diff");
    let mut records = vec![contacts_input, members_input, users_input];
    records.extend(keep_record);
    Ok(Some(MappingPlan {
        group_id: group.id.clone(),
        display_name,
        records,
        tenant_id: Some(tenant_id),
        contacts: contacts_count,
        warnings,
        result,
    }))
}

/// The member user at `position`, as [`crate::directory::graph::GraphClient::list_members_detailed`] would have
/// given it: the member and the user are the same Graph object, so its UPN, display name and mail are the user's.
fn member_of(table: &UserTable, position: u32) -> Option<MemberRef<'_>> {
    let user = table.get(position as usize)?;
    Some(MemberRef {
        id: user.id(),
        kind: &MemberKind::User,
        upn: Some(user.upn()),
        display_name: user.display_name(),
        mail: user.mail(),
        source_line: None,
    })
}

/// Takes in one resolved user: a member user already in the table is not added again (the resolved read and the
/// member read are the same object); any other user is added.
fn take_resolved(
    table: &mut UserTable,
    position_of: &mut HashMap<u128, u32>,
    member_users: usize,
    resolved: &mut Resolved,
    user: &DirectoryUser,
) -> std::result::Result<(), crate::directory::user_table::TableFull> {
    let id = user.id.to_u128();
    let position = match position_of.get(&id) {
        Some(&position) if (position as usize) >= member_users => {
            // The same user twice in the reads of all users: only the whole path says which one counts.
            resolved.conflict = true;
            return Ok(());
        }
        Some(&position) => {
            if !table.holds(position as usize, user) {
                resolved.conflict = true;
                return Ok(());
            }
            position
        }
        None => {
            let position = table.len() as u32;
            table.push_user(user)?;
            position_of.insert(id, position);
            position
        }
    };
    // Writing JSON into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut resolved.proxies, &user.proxy_addresses);
    resolved.users.push((id, position, resolved.proxies.len()));
    Ok(())
}

/// The SHA-256 (hex) of the members' [`crate::directory::graph::canonical_members`] bytes, made from the table.
fn members_sha256(members: &Members, table: &UserTable) -> String {
    let id_of = |slot: &Slot| match *slot {
        Slot::User(position) => table.id_at(position as usize).unwrap_or_default(),
        Slot::Other(at) => members.others.get(at as usize).map(|m| m.id.to_u128()).unwrap_or_default(),
    };
    let mut order: Vec<(u128, Slot)> = members.slots.iter().map(|slot| (id_of(slot), *slot)).collect();
    // Stable, as the whole path's sort: members listed twice keep their order.
    order.sort_by_key(|&(id, _)| id);
    let mut hasher = Sha256::new();
    let mut row = Vec::new();
    for (_, slot) in order {
        row.clear();
        let member = match slot {
            Slot::User(position) => member_of(table, position),
            Slot::Other(at) => members.others.get(at as usize).map(GroupMember::as_ref),
        };
        if let Some(member) = member {
            canonical_member_row(&mut row, &member);
        }
        hasher.update(&row);
    }
    hex::encode(hasher.finalize())
}

/// The SHA-256 (hex) of the resolved users' [`crate::directory::graph::canonical_users`] bytes, made from the
/// table and the proxy addresses kept beside it.
fn users_sha256(resolved: &Resolved, table: &UserTable) -> String {
    let mut order: Vec<(u128, u32, usize, usize)> = Vec::with_capacity(resolved.users.len());
    let mut start = 0;
    for &(id, position, end) in &resolved.users {
        order.push((id, position, start, end));
        start = end;
    }
    order.sort_by_key(|&(id, ..)| id);
    let mut hasher = Sha256::new();
    let mut row = Vec::new();
    for (_, position, start, end) in order {
        let Some(user) = table.get(position as usize) else { continue };
        let id = ObjectId::from_u128(user.id_u128());
        let fields = CanonicalUser {
            id: &id,
            upn: user.upn(),
            display_name: user.display_name(),
            mail: user.mail(),
            user_type: user.user_type(),
            account_enabled: user.account_enabled(),
        };
        row.clear();
        canonical_user_row(&mut row, &fields, resolved.proxies.get(start..end).unwrap_or_default());
        hasher.update(&row);
    }
    hex::encode(hasher.finalize())
}
