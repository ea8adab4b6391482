//! The path for a mapping whose members and users both come from Microsoft Graph: member pages and user pages are
//! taken into one compact [`UserTable`] as they arrive, never held as one value per member or user, and then go
//! through the same [`Reconciler`] and [`MemberSet`] as the file path. The plan is the one [`super::inputs::gather`]
//! and [`crate::reconcile::reconcile`] make from the same reads, byte for byte.
//!
//! What is kept per member user is its position in the table (its fields are the same Graph object as the user
//! the table holds); per resolved user, its position and its proxy addresses in the few bytes
//! [`UserTable::encode_proxies`] needs beside the table (the table keeps only some `smtp:` ones, and the plan's
//! input hash covers all of them): one byte an address for the usual `SMTP:`/`smtp:` ones. The list's addresses
//! are borrowed from the list where it already writes them in their normalized form. Other members (groups,
//! devices, contacts) are few and kept whole.

use sha2::{Digest, Sha256};

use super::inputs::{live_group, read_contacts_into, read_keep_of, LiveGroup};
use super::mapping::{DirectorySource, Mapping};
use super::services::Services;
use super::{reconcile_options, MappingPlan};
use crate::directory::graph::{canonical_member_row, canonical_user_row, CanonicalUser};
use crate::directory::user_table::UserTable;
use crate::directory::{DirectoryUser, GroupMember, MemberKind, MemberRef};
use crate::error::{Error, Result};
use crate::identity::{Email, ObjectId};
use crate::phases::Phases;
use crate::reconcile::{IdPositions, MemberSet, Reconciler, UserIndex};
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

/// The users resolved from the list's addresses: their positions in the table and their proxy addresses
/// ([`UserTable::encode_proxies`]).
#[derive(Default)]
struct Resolved {
    /// (position in the table, end of the user's proxy addresses in `proxies`), in arrival order.
    users: Vec<(u32, usize)>,
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
    let mut contacts = ContactBuffer::new();
    let contacts_input = read_contacts_into(mapping, services, &mut contacts)?;
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

    let mut spare = String::new();
    let keys = address_keys(&contacts, &mut spare);
    let addresses = keys.len();
    let member_users = table.len();
    let mut position_of = IdPositions::of(&table);
    let mut resolved = Resolved::default();
    services.block_on(graph.each_resolved_user(keys, |user| {
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
    let users_input = graph.users_input_of(addresses, resolved.users.len(), users_sha256(&resolved, &table)?);
    drop(resolved);
    drop(spare);
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
    drop(members);
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
    position_of: &mut IdPositions,
    member_users: usize,
    resolved: &mut Resolved,
    user: &DirectoryUser,
) -> std::result::Result<(), crate::directory::user_table::TableFull> {
    let id = user.id.to_u128();
    let position = match position_of.get(table, id) {
        Some(position) if (position as usize) >= member_users => {
            // The same user twice in the reads of all users: only the whole path says which one counts.
            resolved.conflict = true;
            return Ok(());
        }
        Some(position) => {
            if !table.holds(position as usize, user) {
                resolved.conflict = true;
                return Ok(());
            }
            position
        }
        None => {
            let position = table.len() as u32;
            table.push_user(user)?;
            position_of.insert(table, id, position);
            position
        }
    };
    table.encode_proxies(position as usize, user.proxy_addresses.iter().map(String::as_str), &mut resolved.proxies);
    resolved.users.push((position, resolved.proxies.len()));
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
fn users_sha256(resolved: &Resolved, table: &UserTable) -> Result<String> {
    let mut order: Vec<(u32, usize, usize)> = Vec::with_capacity(resolved.users.len());
    let mut start = 0;
    for &(position, end) in &resolved.users {
        order.push((position, start, end));
        start = end;
    }
    order.sort_by_key(|&(position, ..)| table.id_at(position as usize));
    let mut hasher = Sha256::new();
    let mut row = Vec::new();
    let mut proxies = Vec::new();
    for (position, start, end) in order {
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
        proxies.clear();
        resolved
            .proxies
            .get(start..end)
            .and_then(|encoded| table.write_proxies_json(position as usize, encoded, &mut proxies))
            .ok_or_else(|| Error::Internal(format!("the proxy addresses of user {id} were kept wrongly")))?;
        row.clear();
        canonical_user_row(&mut row, &fields, &proxies);
        hasher.update(&row);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The list's addresses as [`Email`] normalizes them (invalid ones left out), sorted, each once: borrowed from the
/// list where it writes an address that way already, else from `spare` (one line per address; a normalized
/// address has no line break).
fn address_keys<'a>(contacts: &'a ContactBuffer, spare: &'a mut String) -> Vec<&'a str> {
    const INVALID: u8 = 0;
    const AS_WRITTEN: u8 = 1;
    const IN_SPARE: u8 = 2;
    let mut key = String::new();
    let kinds: Vec<u8> = contacts
        .iter()
        .map(|contact| match Email::normalize_into(contact.email, &mut key) {
            Err(_) => INVALID,
            Ok(()) if key == contact.email => AS_WRITTEN,
            Ok(()) => {
                spare.push_str(&key);
                spare.push('\n');
                IN_SPARE
            }
        })
        .collect();
    let spare: &'a str = spare;
    let mut spare_keys = spare.split_terminator('\n');
    let mut keys = Vec::with_capacity(kinds.iter().filter(|&&k| k != INVALID).count());
    for (contact, kind) in contacts.iter().zip(kinds) {
        match kind {
            AS_WRITTEN => keys.push(contact.email),
            IN_SPARE => keys.extend(spare_keys.next()),
            _ => {}
        }
    }
    keys.sort_unstable();
    keys.dedup();
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::ContactRef;

    #[test]
    fn address_keys_are_normalized_sorted_and_once_each() {
        let mut contacts = ContactBuffer::new();
        for (line, email) in
            ["b@x.example", " A@X.example ", "not an address", "a@x.example", "", "C@x.example", "b@x.example"]
                .into_iter()
                .enumerate()
        {
            contacts.push(ContactRef { email, line: line as u64 + 1, ..ContactRef::default() });
        }
        let mut spare = String::new();
        let keys = address_keys(&contacts, &mut spare);
        assert_eq!(keys, ["a@x.example", "b@x.example", "c@x.example"]);
        // Only the addresses not already written in normalized form are copied.
        assert_eq!(spare, "a@x.example\nc@x.example\n");
    }
}
