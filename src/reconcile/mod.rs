//! Resolution and diff: from a list of contacts, the directory's users and a group's current members to the
//! adds, removes and entries not acted on. Pure: no I/O, no clock, no randomness, so the offline (CSV) and
//! live (Graph) paths share it unchanged and give the same plan.
//!
//! Rules:
//! - An address is normalized (trimmed, lowercased) and checked; a malformed one is `invalid`.
//! - A contact resolves to exactly one user, and resolution never guesses. The userPrincipalName wins. Otherwise
//!   `mail` and `smtp:` proxy addresses are one level (Exchange keeps the primary address in both, so one user's
//!   mail that is another user's proxy address is a conflict in the directory, not a preference): an address two
//!   different users hold there is `ambiguous`, and the entry names both and how each matched. When a UPN match
//!   wins while another user holds the address as mail or proxy, the add carries a note naming that user. No
//!   match at all is `unresolved`.
//! - A contact that repeats an earlier address, or resolves to a user an earlier contact already resolved to,
//!   is a `duplicate` of that earlier line.
//! - Adds are resolved users who are not members; removes are user members nobody resolved to, except those
//!   on the keep list. Members that are not users are reported and never removed.

mod index;

use std::collections::BTreeSet;

use crate::directory::user_table::{UserRef, UserTable};
use crate::directory::{GroupMember, MemberKind, MemberRef};
use crate::identity::{address_key, cmp_address_keys, Email, InvalidEmail, ObjectId};
use crate::plan::{Action, Change, Flag, Precondition, SkipKind, Skipped};
use crate::source::{Contact, ContactRef};

pub use index::{IdPositions, UserIndex};

/// What separates a change's reason from its note (a UPN match while another user holds the address as mail or
/// proxy): `…; matched by userPrincipalName; note: another user also has this address: …`.
pub const NOTE: &str = "; note: ";
use index::{id_hash, key_hash, same_address, FastMap, HashMultimap, MatchedBy, Resolution, GROUP, NONE};

/// Users that are never removed, by object id or userPrincipalName.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeepList {
    ids: BTreeSet<ObjectId>,
    upns: BTreeSet<String>,
}

impl KeepList {
    /// Reads a keep list: one object id or UPN per line; blank lines and `#` comments are ignored. Returns the
    /// 1-based line numbers of entries that are neither.
    pub fn parse(text: &str) -> Result<KeepList, Vec<(u64, String)>> {
        let mut keep = KeepList::default();
        let mut bad = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let entry = line.split('#').next().unwrap_or("").trim().trim_start_matches('\u{feff}');
            if entry.is_empty() {
                continue;
            }
            if let Ok(id) = ObjectId::parse(entry) {
                keep.ids.insert(id);
            } else if entry.contains('@') && !entry.contains(char::is_whitespace) {
                keep.upns.insert(address_key(entry));
            } else {
                bad.push((index as u64 + 1, entry.to_string()));
            }
        }
        if bad.is_empty() {
            Ok(keep)
        } else {
            Err(bad)
        }
    }

    /// Adds one id.
    pub fn insert_id(&mut self, id: ObjectId) {
        self.ids.insert(id);
    }

    /// Adds one UPN.
    pub fn insert_upn(&mut self, upn: &str) {
        self.upns.insert(address_key(upn));
    }

    /// True when the member is on the list by id or UPN.
    pub fn contains(&self, id: &ObjectId, upn: Option<&str>) -> bool {
        self.ids.contains(id) || upn.is_some_and(|u| self.upns.contains(&address_key(u)))
    }

    /// True when the list is empty.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty() && self.upns.is_empty()
    }
}

/// Options that shape the diff.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileOptions {
    /// Plan adds only; removes are reported as suppressed.
    pub add_only: bool,
    /// Plan removes only; adds are reported as suppressed.
    pub remove_only: bool,
    /// Members never removed.
    pub keep: KeepList,
}

/// The outcome for one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconciliation {
    /// Adds (sorted by UPN), then removes (sorted by UPN).
    pub changes: Vec<Change>,
    /// Everything not acted on, by kind, then by line.
    pub not_acted_on: Vec<Skipped>,
    /// The user membership the changes were computed against.
    pub precondition: Precondition,
    /// Things the person running `plan` should see at once (duplicates collapsed, …).
    pub warnings: Vec<String>,
}

/// A contact that resolved to a user.
struct Wanted {
    /// The contact, in [`Reconciler::firsts`].
    first: u32,
    /// The user's position.
    user: u32,
    how: MatchedBy,
}

/// A contact that named an address first: its line and where its address (as written, trimmed) is in
/// [`Reconciler::addresses`].
struct FirstContact {
    line: u64,
    start: usize,
    end: usize,
}

/// Resolution and diff fed one entry at a time, so that a caller reading files need not hold them: every contact,
/// in list order ([`Reconciler::add_contact`]), and every member ([`Reconciler::add_member`], or a [`MemberSet`]
/// filled on another thread and given to [`Reconciler::finish_with`]), then [`Reconciler::finish`]. [`reconcile`]
/// does exactly this over slices. Only what the plan can still need is kept: each contact's line and address, and
/// a few bytes per member.
pub struct Reconciler<'u> {
    index: &'u UserIndex<'u>,
    not_acted_on: Vec<Skipped>,
    duplicates: u64,
    /// Contacts that named an address first, by the hash of the address (confirmed on lookup).
    first_of_address: HashMultimap,
    firsts: Vec<FirstContact>,
    /// The addresses of `firsts`, end to end.
    addresses: String,
    /// Per user position (the one that stands for its id): the entry in `wanted`, or NONE.
    wanted_of_user: Vec<u32>,
    wanted: Vec<Wanted>,
    /// The contact's own name, for wanted users the directory has no display name for (by `wanted` entry).
    wanted_names: FastMap<u32, String>,
    /// For a user matched by UPN while other users hold the address as mail or proxy: who (by `wanted` entry).
    wanted_notes: FastMap<u32, String>,
    members: MemberSet<'u>,
    /// Scratch space for one group of contacts: their keys end to end, and per contact its key's span and hash
    /// (or why it is not an address).
    keys: String,
    checked: Vec<Result<(usize, usize, u32), InvalidEmail>>,
    key: String,
    found: Vec<(MatchedBy, u32)>,
}

impl<'u> Reconciler<'u> {
    /// Starts a reconciliation against the users of `index`.
    pub fn new(index: &'u UserIndex<'u>) -> Reconciler<'u> {
        Reconciler {
            index,
            not_acted_on: Vec::new(),
            duplicates: 0,
            first_of_address: HashMultimap::default(),
            firsts: Vec::new(),
            addresses: String::new(),
            wanted_of_user: vec![NONE; index.users().len()],
            wanted: Vec::new(),
            wanted_names: FastMap::default(),
            wanted_notes: FastMap::default(),
            members: MemberSet::new(index),
            keys: String::new(),
            checked: Vec::new(),
            key: String::new(),
            found: Vec::new(),
        }
    }

    /// Reserves room for about `contacts` more contacts and `members` more members.
    pub fn reserve(&mut self, contacts: usize, members: usize) {
        self.first_of_address.reserve(contacts);
        self.firsts.reserve(contacts);
        self.members.reserve(members);
    }

    /// The address as written (trimmed) of a first contact.
    fn address_of(&self, first: &FirstContact) -> &str {
        self.addresses.get(first.start..first.end).unwrap_or_default()
    }

    fn user(&self, position: u32) -> Option<UserRef<'u>> {
        self.index.users().get(position as usize)
    }

    /// Resolves the next contact of the list, collapsing duplicates onto the first line that named the address or
    /// user.
    pub fn add_contact(&mut self, contact: &Contact) {
        self.add_contact_ref(contact.as_ref());
    }

    /// Like [`Reconciler::add_contact`], for a borrowed contact.
    pub fn add_contact_ref(&mut self, contact: ContactRef<'_>) {
        self.add_contact_group(&[contact]);
    }

    /// Like [`Reconciler::add_contact`] for each contact in turn, faster: the memory reads of a group of contacts'
    /// lookups are started together.
    pub fn add_contact_refs<'c>(&mut self, contacts: impl IntoIterator<Item = ContactRef<'c>>) {
        let mut group = Vec::with_capacity(GROUP);
        for contact in contacts {
            group.push(contact);
            if group.len() == GROUP {
                self.add_contact_group(&group);
                group.clear();
            }
        }
        self.add_contact_group(&group);
    }

    fn add_contact_group(&mut self, group: &[ContactRef<'_>]) {
        let (mut keys, mut checked, mut key) =
            (std::mem::take(&mut self.keys), std::mem::take(&mut self.checked), std::mem::take(&mut self.key));
        keys.clear();
        checked.clear();
        for contact in group {
            checked.push(Email::normalize_into(contact.email, &mut key).map(|()| {
                let start = keys.len();
                keys.push_str(&key);
                (start, keys.len(), key_hash(&key))
            }));
        }
        // Start every read the group's lookups will need: the slots first, then the users they point to.
        let hashes = checked.iter().filter_map(|c| c.as_ref().ok()).map(|&(_, _, hash)| hash);
        for hash in hashes.clone() {
            self.first_of_address.touch(hash);
            self.index.touch_address(hash);
        }
        for hash in hashes {
            if let Some(position) = self.index.touch_address_user(hash) {
                if let Some(wanted) = self.wanted_of_user.get(position as usize) {
                    crate::directory::user_table::touch(wanted);
                }
            }
        }
        for (contact, checked) in group.iter().zip(&checked) {
            match checked {
                Ok((start, end, hash)) => {
                    self.add_valid_contact(*contact, keys.get(*start..*end).unwrap_or_default(), *hash)
                }
                Err(why) => self.not_acted_on.push(skipped_contact(SkipKind::Invalid, contact, why.to_string())),
            }
        }
        (self.keys, self.checked, self.key) = (keys, checked, key);
    }

    /// [`Reconciler::add_contact_ref`] for a contact whose address normalizes to `key` (whose hash is `hash`).
    fn add_valid_contact(&mut self, contact: ContactRef<'_>, key: &str, hash: u32) {
        let repeated = self
            .first_of_address
            .get(hash)
            .filter_map(|i| self.firsts.get(i as usize))
            .find(|earlier| same_address(self.address_of(earlier), key))
            .map(|earlier| earlier.line);
        if let Some(line) = repeated {
            self.duplicates += 1;
            self.not_acted_on.push(skipped_contact(SkipKind::Duplicate, &contact, format!("repeats line {line}")));
            return;
        }
        let first = self.firsts.len() as u32;
        let start = self.addresses.len();
        self.addresses.push_str(contact.email.trim());
        self.firsts.push(FirstContact { line: contact.line, start, end: self.addresses.len() });
        self.first_of_address.insert(hash, first);
        let mut found = std::mem::take(&mut self.found);
        let resolution = self.index.resolve(key, hash, &mut found);
        // Rare: a UPN match while other users hold the address as mail or proxy. The add names them.
        let note = match resolution {
            Resolution::Found(position, MatchedBy::Upn) if found.len() > 1 => self.also_held(position, &found),
            _ => None,
        };
        self.found = found;
        match resolution {
            Resolution::Found(position, how) => self.add_resolved(contact, first, position, how, note),
            Resolution::Ambiguous(found) => {
                let names: Vec<String> = found
                    .iter()
                    .filter_map(|&(p, how)| self.user(p).map(|u| (u, how)))
                    .map(|(u, how)| format!("{} ({}) by {}", u.upn(), u.id(), how.label()))
                    .collect();
                self.not_acted_on.push(skipped_contact(
                    SkipKind::Ambiguous,
                    &contact,
                    format!(
                        "{} different users have this address: {}; writeback does not guess: fix the directory, or \
                         list the person by userPrincipalName",
                        found.len(),
                        names.join(", ")
                    ),
                ));
            }
            Resolution::NotFound => self.not_acted_on.push(skipped_contact(
                SkipKind::Unresolved,
                &contact,
                "no user has this address as userPrincipalName, mail or proxy address".into(),
            )),
        }
    }

    /// The note of a UPN match at `position`: the other users in `found` (a lookup's matches) who hold the
    /// address as mail or proxy address, and how. `None` when there are none.
    fn also_held(&self, position: u32, found: &[(MatchedBy, u32)]) -> Option<String> {
        let mut others: Vec<String> = Vec::new();
        for &(how, p) in found.iter().filter(|&&(how, p)| how != MatchedBy::Upn && p != position) {
            let Some(user) = self.user(p) else { continue };
            if self.index.canonical(p) == self.index.canonical(position) {
                continue;
            }
            let text = format!("{} ({}) holds it as {}", user.upn(), user.id(), how.label());
            if !others.contains(&text) {
                others.push(text);
            }
        }
        (!others.is_empty()).then(|| format!("another user also has this address: {}", others.join(", ")))
    }

    /// A first contact that resolved to the user at `position`: wanted, unless an earlier contact resolved to the
    /// same user. `note` names other users who hold the address as mail or proxy (a UPN match).
    fn add_resolved(
        &mut self,
        contact: ContactRef<'_>,
        first: u32,
        position: u32,
        how: MatchedBy,
        note: Option<String>,
    ) {
        let Some(user) = self.user(position) else { return };
        let slot = self.index.canonical(position) as usize;
        if let Some(earlier) = self.wanted_of_user.get(slot).and_then(|&w| self.wanted.get(w as usize)) {
            self.duplicates += 1;
            let (line, address) = match self.firsts.get(earlier.first as usize) {
                Some(first) => (first.line, self.address_of(first)),
                None => (0, ""),
            };
            let mut entry =
                skipped_contact(SkipKind::Duplicate, &contact, format!("same user as line {line} ({address})"));
            entry.object_id = Some(user.id());
            entry.upn = Some(user.upn().to_string());
            self.not_acted_on.push(entry);
            return;
        }
        let entry = self.wanted.len() as u32;
        if let Some(wanted) = self.wanted_of_user.get_mut(slot) {
            *wanted = entry;
        }
        self.wanted.push(Wanted { first, user: position, how });
        if let Some(note) = note {
            self.wanted_notes.insert(entry, note);
        }
        if user.display_name().is_none() {
            if let Some(name) = contact.name() {
                self.wanted_names.insert(entry, name);
            }
        }
    }

    /// Takes in the next member of the group. Users are diffed, other objects are reported and left alone. A user
    /// member listed twice counts once, with its last row.
    pub fn add_member(&mut self, member: &GroupMember) {
        self.members.add(member.as_ref());
    }

    /// The changes, the entries not acted on and the precondition.
    pub fn finish(mut self, options: &ReconcileOptions) -> Reconciliation {
        let members = std::mem::replace(&mut self.members, MemberSet::new(self.index));
        self.finish_with(members, options)
    }

    /// Like [`Reconciler::finish`], with the members that `members` took in (instead of those given to
    /// [`Reconciler::add_member`]).
    pub fn finish_with(self, mut members: MemberSet<'u>, options: &ReconcileOptions) -> Reconciliation {
        members.flush();
        let mut warnings = Vec::new();
        if self.duplicates > 0 {
            warnings.push(format!(
                "{} duplicate contact{} collapsed onto the first line that named the same address or user",
                self.duplicates,
                if self.duplicates == 1 { "" } else { "s" }
            ));
        }
        let Reconciler {
            index,
            not_acted_on,
            firsts,
            addresses,
            wanted_of_user,
            wanted,
            wanted_names,
            wanted_notes,
            first_of_address,
            ..
        } = self;
        if !wanted_notes.is_empty() {
            warnings.push(format!(
                "{} contact{} matched a user by userPrincipalName while another user holds the same address as mail \
                 or proxy address; each add carries a note naming that user",
                wanted_notes.len(),
                if wanted_notes.len() == 1 { "" } else { "s" }
            ));
        }
        drop(first_of_address);
        let users = index.users();
        let MemberSet { row_of_user, rows, differing, others, non_users, ids, precondition, .. } = members;
        let mut not_acted_on = not_acted_on;
        not_acted_on.extend(non_users);
        let precondition = precondition.unwrap_or_else(|| precondition_of(ids));

        // Adds: wanted users who are not members.
        let mut changes = Vec::new();
        for (entry, want) in wanted.iter().enumerate() {
            if row_of_user.get(index.canonical(want.user) as usize).is_some_and(|&row| row != NONE) {
                continue;
            }
            let Some(user) = users.get(want.user as usize) else { continue };
            let (line, address) = match firsts.get(want.first as usize) {
                Some(first) => (first.line, addresses.get(first.start..first.end)),
                None => (0, None),
            };
            let mut reason = format!("in the list (line {line}), not a member; matched by {}", want.how.label());
            if let Some(note) = wanted_notes.get(&(entry as u32)) {
                reason.push_str(NOTE);
                reason.push_str(note);
            }
            if options.remove_only {
                not_acted_on.push(Skipped {
                    kind: SkipKind::SuppressedAdd,
                    email: Some(address.unwrap_or_default().to_string()),
                    object_id: Some(user.id()),
                    upn: Some(user.upn().to_string()),
                    display_name: user.display_name().map(str::to_string),
                    source_line: Some(line),
                    detail: reason,
                });
                continue;
            }
            let display_name =
                user.display_name().map(str::to_string).or_else(|| wanted_names.get(&(entry as u32)).cloned());
            changes.push(Change {
                action: Action::Add,
                user_id: user.id(),
                upn: user.upn().to_string(),
                mail: user.mail().map(str::to_string),
                display_name,
                source_line: Some(line),
                reason,
                flags: flags_of(Some(&user)),
            });
        }

        // What only the adds needed goes now, before the removes are made (a million contacts' worth).
        drop((firsts, addresses, wanted, wanted_names, wanted_notes));

        // Removes: user members nobody resolved to.
        let known_members = row_of_user
            .iter()
            .zip(&wanted_of_user)
            .enumerate()
            .filter(|(_, (&row, &want))| row != NONE && want == NONE)
            .filter_map(|(position, (&row, _))| {
                let user = users.get(position)?;
                Some((rows.get(row as usize)?.resolve(&user, &differing), Some(user)))
            });
        let other_members = others.values().map(|member| (member.as_ref(), None));
        for (member, known) in known_members.chain(other_members) {
            let upn = member.upn.filter(|u| !u.is_empty()).or_else(|| known.map(|u| u.upn()));
            let display_name = member.display_name.or_else(|| known.and_then(|u| u.display_name()));
            let kind = if options.keep.contains(&member.id, upn) {
                Some((SkipKind::Kept, "on the keep list: never removed"))
            } else if options.add_only {
                Some((SkipKind::SuppressedRemove, "member, not in the list; left alone because of --add-only"))
            } else {
                None
            };
            match kind {
                Some((kind, detail)) => not_acted_on.push(Skipped {
                    kind,
                    email: None,
                    object_id: Some(member.id.clone()),
                    upn: upn.map(str::to_string),
                    display_name: display_name.map(str::to_string),
                    source_line: member.source_line,
                    detail: detail.into(),
                }),
                None => changes.push(Change {
                    action: Action::Remove,
                    user_id: member.id.clone(),
                    upn: upn.unwrap_or_default().to_string(),
                    mail: member.mail.or_else(|| known.and_then(|u| u.mail())).map(str::to_string),
                    display_name: display_name.map(str::to_string),
                    source_line: member.source_line,
                    reason: "a member, not in the list".into(),
                    flags: flags_of(known.as_ref()),
                }),
            }
        }

        // No two changes have the same action and user, so an unstable sort gives the one order, without a key
        // per change (a million-member plan's changes would take tens of MB of keys).
        changes.sort_unstable_by(|a, b| {
            (a.action.cmp(&b.action))
                .then_with(|| cmp_address_keys(&a.upn, &b.upn))
                .then_with(|| a.user_id.cmp(&b.user_id))
        });
        not_acted_on.sort_by(|a, b| {
            (a.kind, a.source_line, &a.object_id, &a.email).cmp(&(b.kind, b.source_line, &b.object_id, &b.email))
        });
        Reconciliation { changes, not_acted_on, precondition, warnings }
    }
}

/// The precondition over the ids of the user members (in any order, repeats allowed).
fn precondition_of(mut ids: Vec<u128>) -> Precondition {
    // Ids sort as numbers the same way as their text, and numbers sort faster.
    ids.sort_unstable();
    ids.dedup();
    Precondition::from_ids(ids.into_iter().map(ObjectId::from_u128).collect())
}

/// A member whose id the users list, in a few bytes: its line, and for its UPN, display name and mail whether the
/// member row has none or the user's own (the usual case, nothing kept); a row that says anything else is kept
/// whole in [`MemberSet::differing`].
#[derive(Debug, Clone, Copy)]
struct KnownMember {
    /// The member's line, or [`NO_LINE`] (16 bytes a member, not 24 with an `Option`).
    line: u64,
    /// The row in `differing`, or NONE.
    differing: u32,
    fields: u8,
}

/// No line (a member read from Graph).
const NO_LINE: u64 = u64::MAX;

const UPN_IS_USERS: u8 = 1;
const DISPLAY_NAME_IS_USERS: u8 = 2;
const MAIL_IS_USERS: u8 = 4;

impl KnownMember {
    fn of(member: &MemberRef<'_>, user: &UserRef<'_>) -> Option<KnownMember> {
        let mut fields = 0;
        match member.upn.filter(|u| !u.is_empty()) {
            None => {}
            Some(upn) if upn == user.upn() => fields |= UPN_IS_USERS,
            Some(_) => return None,
        }
        match member.display_name {
            None => {}
            Some(name) if Some(name) == user.display_name() => fields |= DISPLAY_NAME_IS_USERS,
            Some(_) => return None,
        }
        match member.mail {
            None => {}
            Some(mail) if Some(mail) == user.mail() => fields |= MAIL_IS_USERS,
            Some(_) => return None,
        }
        Some(KnownMember { line: member.source_line.unwrap_or(NO_LINE), differing: NONE, fields })
    }

    /// The member row this stands for.
    fn resolve<'a>(&self, user: &UserRef<'a>, differing: &'a [GroupMember]) -> MemberRef<'a> {
        if let Some(member) = differing.get(self.differing as usize) {
            return member.as_ref();
        }
        let pick = |flag: u8, value: Option<&'a str>| if self.fields & flag != 0 { value } else { None };
        MemberRef {
            id: user.id(),
            kind: &MemberKind::User,
            upn: pick(UPN_IS_USERS, Some(user.upn())),
            display_name: pick(DISPLAY_NAME_IS_USERS, user.display_name()),
            mail: pick(MAIL_IS_USERS, user.mail()),
            source_line: (self.line != NO_LINE).then_some(self.line),
        }
    }
}

/// The members side of a reconciliation: takes in a group's members one at a time, in order, keeping a few bytes
/// per user member. It needs only the index, so it can be filled on another thread while a [`Reconciler`] takes in
/// the contacts; [`Reconciler::finish_with`] brings the two together.
pub struct MemberSet<'u> {
    index: &'u UserIndex<'u>,
    /// Per user position (the one that stands for its id): NONE, or the member's entry in `rows`.
    row_of_user: Vec<u32>,
    rows: Vec<KnownMember>,
    /// Member rows that say something other than their user's record.
    differing: Vec<GroupMember>,
    /// User members the users do not list, by id: the last row of each.
    others: FastMap<u128, GroupMember>,
    /// Members that are not users.
    non_users: Vec<Skipped>,
    /// The ids of all user members.
    ids: Vec<u128>,
    /// The precondition, once [`MemberSet::settle`] has made it.
    precondition: Option<Precondition>,
    /// User members taken in but not yet joined to their users (see [`MemberSet::flush`]).
    pending: Vec<PendingMember>,
    pending_text: String,
}

/// A user member waiting in [`MemberSet::pending`]: its fields, with its text in [`MemberSet::pending_text`].
struct PendingMember {
    id: u128,
    hash: u32,
    line: Option<u64>,
    /// End of each of UPN, display name and mail in the text, or NONE when the member has none.
    ends: [usize; 3],
}

impl<'u> MemberSet<'u> {
    /// An empty set, against the users of `index`.
    pub fn new(index: &'u UserIndex<'u>) -> MemberSet<'u> {
        MemberSet {
            index,
            row_of_user: Vec::new(),
            rows: Vec::new(),
            differing: Vec::new(),
            others: FastMap::default(),
            non_users: Vec::new(),
            ids: Vec::new(),
            precondition: None,
            pending: Vec::with_capacity(GROUP),
            pending_text: String::new(),
        }
    }

    /// Makes the precondition now, on this thread, once every member has been taken in (otherwise
    /// [`Reconciler::finish_with`] makes it).
    pub fn settle(&mut self) {
        self.flush();
        if self.precondition.is_none() {
            self.precondition = Some(precondition_of(std::mem::take(&mut self.ids)));
        }
    }

    /// Reserves room for about `members` more members.
    pub fn reserve(&mut self, members: usize) {
        self.ids.reserve(members);
        self.rows.reserve(members);
    }

    /// Takes in the next member of the group. Users are diffed, other objects are reported and left alone. A user
    /// member listed twice counts once, with its last row.
    pub fn add(&mut self, member: MemberRef<'_>) {
        if let Some(settled) = self.precondition.take() {
            // More members after `settle`: the precondition is made again at the end.
            self.ids = settled.member_ids.iter().map(ObjectId::to_u128).collect();
        }
        if *member.kind != MemberKind::User {
            self.non_users.push(Skipped {
                kind: SkipKind::NonUserMember,
                email: None,
                object_id: Some(member.id.clone()),
                upn: member.upn.filter(|u| !u.is_empty()).map(str::to_string),
                display_name: member.display_name.map(str::to_string),
                source_line: member.source_line,
                detail: format!("a {} is never added or removed by writeback", member.kind.label()),
            });
            return;
        }
        let id = member.id.to_u128();
        self.ids.push(id);
        let mut ends = [NONE as usize; 3];
        for (end, field) in ends.iter_mut().zip([member.upn, member.display_name, member.mail]) {
            if let Some(text) = field {
                self.pending_text.push_str(text);
                *end = self.pending_text.len();
            }
        }
        self.pending.push(PendingMember { id, hash: id_hash(id), line: member.source_line, ends });
        if self.pending.len() == GROUP {
            self.flush();
        }
    }

    /// Joins the members waiting in `pending` to their users, starting the memory reads of the whole group first.
    fn flush(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        let text = std::mem::take(&mut self.pending_text);
        pending.iter().for_each(|member| self.index.touch_id(member.hash));
        for member in &pending {
            if let Some(slot) = self.index.touch_id_user(member.hash).and_then(|p| self.row_of_user.get(p as usize)) {
                crate::directory::user_table::touch(slot);
            }
        }
        let mut start = 0;
        for member in &pending {
            let mut fields = [None; 3];
            for (field, &end) in fields.iter_mut().zip(&member.ends) {
                if end != NONE as usize {
                    *field = text.get(start..end);
                    start = end;
                }
            }
            let [upn, display_name, mail] = fields;
            let id = ObjectId::from_u128(member.id);
            self.join(
                member.id,
                member.hash,
                MemberRef { id, kind: &MemberKind::User, upn, display_name, mail, source_line: member.line },
            );
        }
        (self.pending, self.pending_text) = (pending, text);
        self.pending.clear();
        self.pending_text.clear();
    }

    /// Joins one user member to its user (by id).
    fn join(&mut self, id: u128, hash: u32, member: MemberRef<'_>) {
        let found =
            self.index.position_of_hashed(id, hash).and_then(|p| Some((p, self.index.users().get(p as usize)?)));
        let Some((position, user)) = found else {
            self.others.insert(id, member.to_owned());
            return;
        };
        let row = KnownMember::of(&member, &user).unwrap_or_else(|| {
            self.differing.push(member.to_owned());
            KnownMember { line: NO_LINE, differing: self.differing.len() as u32 - 1, fields: 0 }
        });
        if self.row_of_user.is_empty() {
            self.row_of_user = vec![NONE; self.index.users().len()];
        }
        let Some(slot) = self.row_of_user.get_mut(position as usize) else { return };
        match self.rows.get_mut(*slot as usize) {
            Some(earlier) => *earlier = row,
            None => {
                *slot = self.rows.len() as u32;
                self.rows.push(row);
            }
        }
    }
}

/// Computes one group's changes. `users` is the part of the directory the contacts may resolve to (the whole
/// users export, or every user a Graph lookup returned); `members` is the group's current direct membership.
pub fn reconcile(
    contacts: &[Contact],
    users: &UserTable,
    members: &[GroupMember],
    options: &ReconcileOptions,
) -> Reconciliation {
    let index = UserIndex::new(users);
    let mut reconciler = Reconciler::new(&index);
    reconciler.reserve(contacts.len(), members.len());
    reconciler.add_contact_refs(contacts.iter().map(Contact::as_ref));
    for member in members {
        reconciler.add_member(member);
    }
    reconciler.finish(options)
}

fn skipped_contact(kind: SkipKind, contact: &ContactRef<'_>, detail: String) -> Skipped {
    Skipped {
        kind,
        email: Some(contact.email.trim().to_string()),
        object_id: None,
        upn: None,
        display_name: contact.name(),
        source_line: Some(contact.line),
        detail,
    }
}

fn flags_of(user: Option<&UserRef<'_>>) -> Vec<Flag> {
    let mut flags = Vec::new();
    if let Some(user) = user {
        if user.is_guest() {
            flags.push(Flag::Guest);
        }
        if user.is_disabled() {
            flags.push(Flag::Disabled);
        }
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::{DirectoryUser, UserType};

    /// [`super::reconcile`] over users as Graph and the readers give them.
    fn reconcile(
        contacts: &[Contact],
        users: &[DirectoryUser],
        members: &[GroupMember],
        options: &ReconcileOptions,
    ) -> Reconciliation {
        super::reconcile(contacts, &UserTable::from_users(users).unwrap(), members, options)
    }

    use crate::fixtures::id as oid;

    fn user(n: u32, upn: &str) -> DirectoryUser {
        DirectoryUser {
            id: oid(n),
            upn: upn.into(),
            display_name: Some(format!("User {n}")),
            mail: Some(upn.into()),
            user_type: UserType::Member,
            account_enabled: Some(true),
            proxy_addresses: vec![format!("SMTP:{upn}")],
        }
    }

    fn contact(line: u64, email: &str) -> Contact {
        Contact { email: email.into(), line, ..Contact::default() }
    }

    fn member(n: u32, upn: &str) -> GroupMember {
        GroupMember {
            id: oid(n),
            kind: MemberKind::User,
            upn: Some(upn.into()),
            display_name: None,
            mail: None,
            source_line: Some(n as u64 + 1),
        }
    }

    fn kinds(r: &Reconciliation) -> Vec<(SkipKind, Option<u64>)> {
        r.not_acted_on.iter().map(|s| (s.kind, s.source_line)).collect()
    }

    #[test]
    fn adds_and_removes() {
        let users = vec![user(1, "a@x.com"), user(2, "b@x.com"), user(3, "c@x.com")];
        let contacts = vec![contact(2, "A@X.com "), contact(3, "b@x.com")];
        let members = vec![member(2, "b@x.com"), member(3, "c@x.com")];
        let r = reconcile(&contacts, &users, &members, &ReconcileOptions::default());
        let summary: Vec<_> = r.changes.iter().map(|c| (c.action, c.user_id.clone())).collect();
        assert_eq!(summary, vec![(Action::Add, oid(1)), (Action::Remove, oid(3))]);
        assert_eq!(r.changes[0].source_line, Some(2));
        assert!(r.changes[0].reason.contains("userPrincipalName"));
        assert_eq!(r.precondition.member_count, 2);
        assert!(r.not_acted_on.is_empty());
    }

    #[test]
    fn resolution_order_upn_then_mail_then_proxy() {
        let mut by_mail = user(2, "mail-user@x.com");
        by_mail.mail = Some("shared@x.com".into());
        let mut by_proxy = user(3, "proxy-user@x.com");
        by_proxy.proxy_addresses.push("smtp:alias@x.com".into());
        let users = vec![user(1, "upn@x.com"), by_mail, by_proxy];
        let contacts = vec![contact(2, "upn@x.com"), contact(3, "shared@x.com"), contact(4, "ALIAS@x.com")];
        let r = reconcile(&contacts, &users, &[], &ReconcileOptions::default());
        let reasons: Vec<_> = r.changes.iter().map(|c| (c.user_id.clone(), c.reason.clone())).collect();
        assert_eq!(reasons.len(), 3);
        assert!(reasons.iter().any(|(id, why)| *id == oid(2) && why.ends_with("matched by mail")));
        assert!(reasons.iter().any(|(id, why)| *id == oid(3) && why.ends_with("matched by proxy address")));
    }

    #[test]
    fn upn_match_wins_over_another_users_mail() {
        let mut other = user(2, "other@x.com");
        other.mail = Some("a@x.com".into());
        let users = vec![user(1, "a@x.com"), other];
        let r = reconcile(&[contact(2, "a@x.com")], &users, &[], &ReconcileOptions::default());
        assert_eq!(r.changes.len(), 1);
        assert_eq!(r.changes[0].user_id, oid(1));
    }

    #[test]
    fn mail_and_proxy_addresses_are_one_level_and_a_conflict_is_ambiguous() {
        // One user's mail is another user's proxy address: neither is preferred.
        let mut by_mail = user(1, "one@x.com");
        by_mail.mail = Some("shared@x.com".into());
        let mut by_proxy = user(2, "two@x.com");
        by_proxy.proxy_addresses.push("smtp:Shared@x.com".into());
        let r = reconcile(&[contact(2, "shared@x.com")], &[by_proxy, by_mail], &[], &ReconcileOptions::default());
        assert!(r.changes.is_empty(), "{:?}", r.changes);
        assert_eq!(kinds(&r), vec![(SkipKind::Ambiguous, Some(2))]);
        let detail = &r.not_acted_on[0].detail;
        assert!(detail.contains(&format!("one@x.com ({}) by mail", oid(1))), "{detail}");
        assert!(detail.contains(&format!("two@x.com ({}) by proxy address", oid(2))), "{detail}");
        // In directory order, whatever the order of the rules.
        assert!(detail.find("two@x.com") < detail.find("one@x.com"), "{detail}");
    }

    #[test]
    fn a_upn_match_wins_and_notes_who_else_holds_the_address() {
        let mut by_mail = user(2, "other@x.com");
        by_mail.mail = Some("a@x.com".into());
        let mut by_proxy = user(3, "third@x.com");
        by_proxy.proxy_addresses.push("smtp:A@x.com".into());
        let users = vec![user(1, "a@x.com"), by_mail, by_proxy, user(4, "b@x.com")];
        let r = reconcile(&[contact(2, "a@x.com"), contact(3, "b@x.com")], &users, &[], &ReconcileOptions::default());
        assert_eq!(r.changes.len(), 2);
        let noted = &r.changes[0];
        assert_eq!(noted.user_id, oid(1));
        assert!(noted.reason.contains("matched by userPrincipalName; note: "), "{}", noted.reason);
        assert!(noted.reason.contains(&format!("other@x.com ({}) holds it as mail", oid(2))), "{}", noted.reason);
        assert!(noted.reason.contains(&format!("third@x.com ({}) holds it as proxy address", oid(3))));
        assert!(!r.changes[1].reason.contains(NOTE), "no note without another holder");
        assert!(r.warnings.iter().any(|w| w.contains("1 contact matched a user by userPrincipalName")));
        // The same user holding the address as UPN and proxy needs no note.
        let mut own = user(1, "a@x.com");
        own.proxy_addresses.push("smtp:a@X.com".into());
        let r = reconcile(&[contact(2, "a@x.com")], &[own], &[], &ReconcileOptions::default());
        assert!(!r.changes[0].reason.contains(NOTE), "{}", r.changes[0].reason);
    }

    #[test]
    fn ambiguous_unresolved_invalid_and_duplicates() {
        let mut one = user(1, "one@x.com");
        one.mail = Some("team@x.com".into());
        let mut two = user(2, "two@x.com");
        two.mail = Some("Team@x.com".into());
        let users = vec![one, two, user(3, "c@x.com")];
        let contacts = vec![
            contact(2, "team@x.com"),
            contact(3, "nobody@x.com"),
            contact(4, "not-an-address"),
            contact(5, "c@x.com"),
            contact(6, " C@X.COM"),
            contact(7, "SMTP-alias-of-c@x.com"),
        ];
        let mut users = users;
        users[2].proxy_addresses.push("smtp:smtp-alias-of-c@x.com".into());
        let r = reconcile(&contacts, &users, &[], &ReconcileOptions::default());
        assert_eq!(r.changes.len(), 1);
        assert_eq!(
            kinds(&r),
            vec![
                (SkipKind::Invalid, Some(4)),
                (SkipKind::Unresolved, Some(3)),
                (SkipKind::Ambiguous, Some(2)),
                (SkipKind::Duplicate, Some(6)),
                (SkipKind::Duplicate, Some(7)),
            ]
        );
        let ambiguous = &r.not_acted_on[2];
        assert!(ambiguous.detail.contains("one@x.com") && ambiguous.detail.contains("two@x.com"));
        assert!(r.not_acted_on[3].detail.contains("repeats line 5"));
        assert!(r.not_acted_on[4].detail.contains("same user as line 5"));
        assert_eq!(r.warnings.len(), 1);
    }

    #[test]
    fn non_user_members_are_reported_not_removed() {
        let group = GroupMember {
            id: oid(9),
            kind: MemberKind::Group,
            upn: None,
            display_name: Some("Nested".into()),
            mail: None,
            source_line: Some(4),
        };
        let r = reconcile(&[], &[], &[group], &ReconcileOptions::default());
        assert!(r.changes.is_empty());
        assert_eq!(kinds(&r), vec![(SkipKind::NonUserMember, Some(4))]);
        assert_eq!(r.precondition.member_count, 0);
    }

    #[test]
    fn keep_add_only_remove_only() {
        let users = vec![user(1, "a@x.com"), user(2, "b@x.com"), user(3, "c@x.com")];
        let contacts = vec![contact(2, "a@x.com")];
        let members = vec![member(2, "b@x.com"), member(3, "C@x.com")];
        let mut keep = KeepList::default();
        keep.insert_upn("c@X.com");
        let r = reconcile(&contacts, &users, &members, &ReconcileOptions { keep: keep.clone(), ..Default::default() });
        assert_eq!(r.changes.iter().filter(|c| c.action == Action::Remove).count(), 1);
        assert!(kinds(&r).contains(&(SkipKind::Kept, Some(4))));

        let r = reconcile(&contacts, &users, &members, &ReconcileOptions { add_only: true, ..Default::default() });
        assert!(r.changes.iter().all(|c| c.action == Action::Add));
        assert_eq!(r.not_acted_on.iter().filter(|s| s.kind == SkipKind::SuppressedRemove).count(), 2);

        let r = reconcile(&contacts, &users, &members, &ReconcileOptions { remove_only: true, ..Default::default() });
        assert!(r.changes.iter().all(|c| c.action == Action::Remove));
        assert_eq!(r.not_acted_on.iter().filter(|s| s.kind == SkipKind::SuppressedAdd).count(), 1);
    }

    #[test]
    fn guests_and_disabled_are_flagged() {
        let mut guest = user(1, "ext_partner.com#EXT#@x.onmicrosoft.com");
        guest.mail = Some("partner@partner.com".into());
        guest.user_type = UserType::Guest;
        let mut disabled = user(2, "gone@x.com");
        disabled.account_enabled = Some(false);
        let r = reconcile(
            &[contact(2, "partner@partner.com"), contact(3, "gone@x.com")],
            &[guest, disabled],
            &[],
            &ReconcileOptions::default(),
        );
        let flags: Vec<_> = r.changes.iter().map(|c| (c.user_id.clone(), c.flags.clone())).collect();
        assert!(flags.contains(&(oid(1), vec![Flag::Guest])));
        assert!(flags.contains(&(oid(2), vec![Flag::Disabled])));
    }

    #[test]
    fn keep_list_parsing() {
        let keep =
            KeepList::parse("# comment\nceo@x.com\n\n00000000-0000-0000-0000-000000000001 # the board\n").unwrap();
        assert!(keep.contains(&oid(1), None));
        assert!(keep.contains(&oid(5), Some("CEO@x.com")));
        assert_eq!(KeepList::parse("ok@x.com\nnot valid\n").unwrap_err(), vec![(2, "not valid".to_string())]);
    }

    #[test]
    fn a_user_with_one_address_twice_is_not_ambiguous() {
        let mut u = user(1, "upn@x.com");
        u.mail = None;
        u.proxy_addresses = vec!["SMTP:Alias@x.com".into(), "smtp:alias@X.com".into(), "x500:/o=alias@x.com".into()];
        let r = reconcile(&[contact(2, "alias@x.com")], &[u], &[], &ReconcileOptions::default());
        assert_eq!(r.changes.len(), 1);
        assert!(r.changes[0].reason.ends_with("matched by proxy address"));
    }

    #[test]
    fn a_repeated_user_id_is_one_user() {
        // Two rows with the same id: whichever row a contact resolves to, the member with that id is that user.
        let users = vec![user(1, "first@x.com"), user(1, "second@x.com"), user(2, "b@x.com")];
        let contacts = vec![contact(2, "first@x.com"), contact(3, "second@x.com")];
        let members = vec![member(1, "second@x.com"), member(2, "b@x.com"), member(2, "B@x.com")];
        let r = reconcile(&contacts, &users, &members, &ReconcileOptions::default());
        let summary: Vec<_> = r.changes.iter().map(|c| (c.action, c.user_id.clone(), c.upn.clone())).collect();
        // The member listed twice counts once, with its last row.
        assert_eq!(summary, vec![(Action::Remove, oid(2), "B@x.com".to_string())]);
        assert_eq!(kinds(&r), vec![(SkipKind::Duplicate, Some(3))]);
        assert!(r.not_acted_on[0].detail.contains("same user as line 2 (first@x.com)"));
        assert_eq!(r.precondition.member_count, 2);
    }

    #[test]
    fn names_and_addresses_of_adds_come_from_the_contact() {
        let mut nameless = user(1, "a@x.com");
        nameless.display_name = None;
        let mut c = contact(2, "  A@x.com ");
        c.first_name = Some("Ada".into());
        c.last_name = Some("Lovelace".into());
        let r = reconcile(&[c.clone()], &[nameless.clone()], &[], &ReconcileOptions::default());
        assert_eq!(r.changes[0].display_name.as_deref(), Some("Ada Lovelace"));
        let r = reconcile(&[c], &[nameless], &[], &ReconcileOptions { remove_only: true, ..Default::default() });
        assert_eq!(r.not_acted_on[0].kind, SkipKind::SuppressedAdd);
        assert_eq!(r.not_acted_on[0].email.as_deref(), Some("A@x.com"));
        assert_eq!(r.not_acted_on[0].display_name, None);
    }

    #[test]
    fn large_inputs_give_the_same_plan_as_small_ones() {
        // Above the size where the index is built on two threads.
        let users: Vec<_> = (0..60_000).map(|n| user(n, &format!("u{n}@x.com"))).collect();
        let contacts: Vec<_> = (0..30_000).map(|n| contact(n as u64 + 2, &format!("U{n}@x.com"))).collect();
        let members: Vec<_> = (29_990..30_010).map(|n| member(n, &format!("u{n}@x.com"))).collect();
        let r = reconcile(&contacts, &users, &members, &ReconcileOptions::default());
        assert_eq!(r.changes.iter().filter(|c| c.action == Action::Add).count(), 29_990);
        assert_eq!(r.changes.iter().filter(|c| c.action == Action::Remove).count(), 10);
        assert_eq!(r.precondition.member_count, 20);
    }

    #[test]
    fn output_is_deterministic() {
        let users: Vec<_> = (0..50).map(|n| user(n, &format!("u{n}@x.com"))).collect();
        let contacts: Vec<_> = (0..30).map(|n| contact(n as u64 + 2, &format!("u{n}@x.com"))).collect();
        let members: Vec<_> = (20..50).map(|n| member(n, &format!("u{n}@x.com"))).collect();
        let a = reconcile(&contacts, &users, &members, &ReconcileOptions::default());
        let b = reconcile(&contacts, &users, &members, &ReconcileOptions::default());
        assert_eq!(a, b);
        assert_eq!(a.changes.len(), 20 + 20);
    }
}
