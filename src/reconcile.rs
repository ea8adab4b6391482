//! Resolution and diff: from a list of contacts, the directory's users and a group's current members to the
//! adds, removes and entries not acted on. Pure: no I/O, no clock, no randomness, so the offline (CSV) and
//! live (Graph) paths share it unchanged and give the same plan.
//!
//! Rules:
//! - An address is normalized (trimmed, lowercased) and checked; a malformed one is `invalid`.
//! - A contact resolves to exactly one user: by userPrincipalName, then `mail`, then an `smtp:` proxy address.
//!   The first rule that finds anyone decides; if it finds two or more users, the contact is `ambiguous`. No
//!   match at all is `unresolved`.
//! - A contact that repeats an earlier address, or resolves to a user an earlier contact already resolved to,
//!   is a `duplicate` of that earlier line.
//! - Adds are resolved users who are not members; removes are user members nobody resolved to, except those
//!   on the keep list. Members that are not users are reported and never removed.

use std::collections::{BTreeSet, HashMap};

use crate::directory::{DirectoryUser, GroupMember, MemberKind};
use crate::identity::{address_key, smtp_proxy_address, Email, ObjectId};
use crate::plan::{Action, Change, Flag, Precondition, SkipKind, Skipped};
use crate::source::Contact;

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

/// How a contact was matched to its user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MatchedBy {
    Upn = 0,
    Mail = 1,
    ProxyAddress = 2,
}

impl MatchedBy {
    /// True when the user has `key` (a normalized address) as this kind of address.
    fn matches(self, user: &DirectoryUser, key: &str) -> bool {
        match self {
            MatchedBy::Upn => same_address(&user.upn, key),
            MatchedBy::Mail => user.mail.as_deref().is_some_and(|m| same_address(m, key)),
            MatchedBy::ProxyAddress => {
                user.proxy_addresses.iter().filter_map(|p| smtp_proxy_address(p)).any(|a| same_address(a, key))
            }
        }
    }

    fn label(self) -> &'static str {
        match self {
            MatchedBy::Upn => "userPrincipalName",
            MatchedBy::Mail => "mail",
            MatchedBy::ProxyAddress => "proxy address",
        }
    }
}

/// No entry (in the dense per-user tables and the address chains).
const NONE: u32 = u32::MAX;

/// A fast, non-cryptographic hasher for the large in-memory tables of one run (FxHash's multiply-and-rotate over
/// 8-byte words, with a final mix so that the low and high bits both vary). Every lookup is confirmed against the
/// real key, so a collision costs time, never a wrong answer.
#[derive(Debug, Default, Clone, Copy)]
struct FastHasher(u64);

impl FastHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0xf135_7aea_2e62_a9c5);
    }

    /// Adds `bytes`, each passed through `map`, eight at a time, then their length.
    fn add_bytes(&mut self, bytes: &[u8], map: impl Fn(u8) -> u8) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            for (to, from) in word.iter_mut().zip(chunk) {
                *to = map(*from);
            }
            self.add(u64::from_le_bytes(word));
        }
        self.add(bytes.len() as u64);
    }
}

impl std::hash::Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.add_bytes(bytes, |b| b);
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        // murmur3's fmix64.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<FastHasher>>;

fn fast_map<K, V>(capacity: usize) -> FastMap<K, V> {
    HashMap::with_capacity_and_hasher(capacity, Default::default())
}

/// The hash of an address's comparison key ([`address_key`]), without building the key when the address is
/// ASCII. `None` when the key is empty.
fn address_hash(raw: &str) -> Option<u32> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return None;
    }
    let mut hasher = FastHasher::default();
    if trimmed.is_ascii() {
        hasher.add_bytes(trimmed.as_bytes(), |b| b.to_ascii_lowercase());
    } else {
        hasher.add_bytes(address_key(trimmed).as_bytes(), |b| b);
    }
    Some(std::hash::Hasher::finish(&hasher) as u32)
}

/// The hash of a key that is already normalized (an [`Email`]): equal to [`address_hash`] of any spelling of it.
fn key_hash(key: &str) -> u32 {
    let mut hasher = FastHasher::default();
    hasher.add_bytes(key.as_bytes(), |b| b);
    std::hash::Hasher::finish(&hasher) as u32
}

/// True when `raw`'s comparison key ([`address_key`]) is `key`.
fn same_address(raw: &str, key: &str) -> bool {
    let trimmed = raw.trim();
    if trimmed.is_ascii() {
        trimmed.len() == key.len() && trimmed.bytes().zip(key.bytes()).all(|(a, b)| a.to_ascii_lowercase() == b)
    } else {
        address_key(trimmed) == key
    }
}

/// Items (user or contact positions) by the 32-bit hash of an address. Items whose hashes are equal share a
/// chain; callers confirm each candidate against the address itself.
#[derive(Debug, Default)]
struct AddressChains {
    heads: FastMap<u32, u32>,
    /// (item, next entry in the chain or [`NONE`]).
    entries: Vec<(u32, u32)>,
}

impl AddressChains {
    fn with_capacity(capacity: usize) -> AddressChains {
        AddressChains { heads: fast_map(capacity), entries: Vec::with_capacity(capacity) }
    }

    fn reserve(&mut self, additional: usize) {
        self.heads.reserve(additional);
        self.entries.reserve(additional);
    }

    fn insert(&mut self, hash: u32, item: u32) {
        let entry = self.entries.len() as u32;
        let head = self.heads.entry(hash).or_insert(NONE);
        self.entries.push((item, *head));
        *head = entry;
    }

    /// The items whose address has this hash, latest first.
    fn candidates(&self, hash: u32) -> impl Iterator<Item = u32> + '_ {
        let mut next = self.heads.get(&hash).copied().unwrap_or(NONE);
        std::iter::from_fn(move || {
            let (item, after) = *self.entries.get(next as usize)?;
            next = after;
            Some(item)
        })
    }
}

/// Users indexed by their lowercase UPN, mail and smtp proxy addresses.
///
/// One table holds all three kinds of address (a user's UPN, mail and primary proxy address are usually the same
/// address, so they share a chain); each entry is the user's position times four plus the [`MatchedBy`] rule.
pub struct UserIndex<'a> {
    users: &'a [DirectoryUser],
    by_address: AddressChains,
    by_id: FastMap<&'a ObjectId, u32>,
    /// True when two users share an object id (then the last one stands for the id, as in `by_id`).
    repeated_ids: bool,
}

impl<'a> UserIndex<'a> {
    /// Indexes `users`. With many users, the id table is built on a second thread while this one builds the
    /// address table (both are bound by memory latency, so two cores nearly halve the time).
    pub fn new(users: &'a [DirectoryUser]) -> UserIndex<'a> {
        const PARALLEL_FROM: usize = 50_000;
        let (by_address, (by_id, repeated_ids)) = if users.len() >= PARALLEL_FROM {
            std::thread::scope(|scope| {
                let ids = scope.spawn(|| id_table(users));
                let by_address = address_table(users);
                // The thread only builds a map; should it ever panic, build the map here instead.
                (by_address, ids.join().unwrap_or_else(|_| id_table(users)))
            })
        } else {
            (address_table(users), id_table(users))
        };
        UserIndex { users, by_address, by_id, repeated_ids }
    }

    /// The user with this object id, if the directory knows it.
    pub fn by_id(&self, id: &ObjectId) -> Option<&'a DirectoryUser> {
        self.position_of(id).map(|i| &self.users[i as usize])
    }

    /// The position of the user that stands for this object id (the last user with it).
    fn position_of(&self, id: &ObjectId) -> Option<u32> {
        self.by_id.get(id).copied()
    }

    /// The position that stands for the user at `position`: itself, unless a later user has the same id.
    fn canonical(&self, position: u32) -> u32 {
        if self.repeated_ids {
            self.position_of(&self.users[position as usize].id).unwrap_or(position)
        } else {
            position
        }
    }

    /// Resolves an address: the first of UPN, mail, proxy address that finds anyone decides.
    fn resolve(&self, email: &Email) -> Resolution<'a> {
        let key = email.as_str();
        let hash = key_hash(key);
        for how in [MatchedBy::Upn, MatchedBy::Mail, MatchedBy::ProxyAddress] {
            let mut found: Vec<u32> = self
                .by_address
                .candidates(hash)
                .filter(|&entry| entry % 4 == how as u32)
                .map(|entry| entry / 4)
                .filter(|&i| how.matches(&self.users[i as usize], key))
                .collect();
            match found.as_slice() {
                [] => continue,
                [one] => return Resolution::Found(*one, how),
                _ => {
                    // In directory order, each user once.
                    found.sort_unstable();
                    found.dedup();
                    if let [one] = found.as_slice() {
                        return Resolution::Found(*one, how);
                    }
                    return Resolution::Ambiguous(found.iter().map(|&i| &self.users[i as usize]).collect(), how);
                }
            }
        }
        Resolution::NotFound
    }
}

/// Users by object id (the last user with an id stands for it), and whether any id repeats.
fn id_table(users: &[DirectoryUser]) -> (FastMap<&ObjectId, u32>, bool) {
    let mut by_id = fast_map(users.len());
    let mut repeated = false;
    for (position, user) in users.iter().enumerate() {
        repeated |= by_id.insert(&user.id, position as u32).is_some();
    }
    (by_id, repeated)
}

/// Users by the hash of each address they can be matched by; an entry is the user's position times four plus the
/// [`MatchedBy`] rule (positions stay far below 2^30: a users export is at most 2 GiB).
fn address_table(users: &[DirectoryUser]) -> AddressChains {
    let mut by_address = AddressChains::with_capacity(users.len() * 2);
    for (position, user) in users.iter().enumerate() {
        let position = position as u32;
        let mut add = |address: &str, how: MatchedBy| {
            if let Some(hash) = address_hash(address) {
                by_address.insert(hash, position.wrapping_mul(4) | how as u32);
            }
        };
        add(&user.upn, MatchedBy::Upn);
        if let Some(mail) = &user.mail {
            add(mail, MatchedBy::Mail);
        }
        for proxy in &user.proxy_addresses {
            if let Some(address) = smtp_proxy_address(proxy) {
                add(address, MatchedBy::ProxyAddress);
            }
        }
    }
    by_address
}

enum Resolution<'a> {
    /// The user's position.
    Found(u32, MatchedBy),
    Ambiguous(Vec<&'a DirectoryUser>, MatchedBy),
    NotFound,
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

/// A user member that is the directory's user at this position, but not (yet) wanted: its row is kept, since it
/// may be removed.
const MEMBER_WANTED: u32 = u32::MAX - 1;

/// Resolution and diff fed one entry at a time, so that a caller reading files need not hold them: first every
/// contact, in list order ([`Reconciler::add_contact`]), then every member ([`Reconciler::add_member`]), then
/// [`Reconciler::finish`]. [`reconcile`] does exactly this over slices. Only what the plan can still need is kept:
/// each contact's line and address, and the rows of members that may be removed.
pub struct Reconciler<'u> {
    users: &'u [DirectoryUser],
    index: UserIndex<'u>,
    not_acted_on: Vec<Skipped>,
    duplicates: u64,
    /// Contacts that named an address first, by the hash of the address (confirmed on lookup).
    first_of_address: AddressChains,
    firsts: Vec<FirstContact>,
    /// The addresses of `firsts`, end to end.
    addresses: String,
    /// Per user position (the one that stands for its id): the entry in `wanted`, or NONE.
    wanted_of_user: Vec<u32>,
    wanted: Vec<Wanted>,
    /// The contact's own name, for wanted users the directory has no display name for (by `wanted` entry).
    wanted_names: FastMap<u32, String>,
    /// Per user position: NONE (not a member), MEMBER_WANTED, or the member's row in `member_rows`.
    member_of_user: Vec<u32>,
    member_rows: Vec<GroupMember>,
    /// User members the users do not list (never wanted), by id: the last row of each.
    other_members: FastMap<ObjectId, GroupMember>,
    member_ids: Vec<ObjectId>,
}

impl<'u> Reconciler<'u> {
    /// Starts a reconciliation against `users` (indexed at once).
    pub fn new(users: &'u [DirectoryUser]) -> Reconciler<'u> {
        Reconciler {
            users,
            index: UserIndex::new(users),
            not_acted_on: Vec::new(),
            duplicates: 0,
            first_of_address: AddressChains::default(),
            firsts: Vec::new(),
            addresses: String::new(),
            wanted_of_user: vec![NONE; users.len()],
            wanted: Vec::new(),
            wanted_names: fast_map(0),
            member_of_user: vec![NONE; users.len()],
            member_rows: Vec::new(),
            other_members: fast_map(0),
            member_ids: Vec::new(),
        }
    }

    /// Reserves room for about `contacts` more contacts and `members` more members.
    pub fn reserve(&mut self, contacts: usize, members: usize) {
        self.first_of_address.reserve(contacts);
        self.firsts.reserve(contacts);
        self.member_ids.reserve(members);
    }

    /// The address as written (trimmed) of a first contact.
    fn address_of(&self, first: &FirstContact) -> &str {
        self.addresses.get(first.start..first.end).unwrap_or_default()
    }

    /// Resolves the next contact of the list, collapsing duplicates onto the first line that named the address or
    /// user.
    pub fn add_contact(&mut self, contact: &Contact) {
        let email = match Email::parse(&contact.email) {
            Ok(email) => email,
            Err(why) => {
                self.not_acted_on.push(skipped_contact(SkipKind::Invalid, contact, why.to_string()));
                return;
            }
        };
        let hash = key_hash(email.as_str());
        let repeated = self
            .first_of_address
            .candidates(hash)
            .filter_map(|i| self.firsts.get(i as usize))
            .find(|earlier| same_address(self.address_of(earlier), email.as_str()))
            .map(|earlier| earlier.line);
        if let Some(line) = repeated {
            self.duplicates += 1;
            self.not_acted_on.push(skipped_contact(SkipKind::Duplicate, contact, format!("repeats line {line}")));
            return;
        }
        let first = self.firsts.len() as u32;
        let start = self.addresses.len();
        self.addresses.push_str(contact.email.trim());
        self.firsts.push(FirstContact { line: contact.line, start, end: self.addresses.len() });
        self.first_of_address.insert(hash, first);
        match self.index.resolve(&email) {
            Resolution::Found(position, how) => {
                let user = &self.users[position as usize];
                let slot = self.index.canonical(position) as usize;
                if let Some(earlier) = self.wanted.get(self.wanted_of_user[slot] as usize) {
                    self.duplicates += 1;
                    let (line, address) = match self.firsts.get(earlier.first as usize) {
                        Some(first) => (first.line, self.address_of(first)),
                        None => (0, ""),
                    };
                    let mut entry =
                        skipped_contact(SkipKind::Duplicate, contact, format!("same user as line {line} ({address})"));
                    entry.object_id = Some(user.id.clone());
                    entry.upn = Some(user.upn.clone());
                    self.not_acted_on.push(entry);
                } else {
                    let entry = self.wanted.len() as u32;
                    self.wanted_of_user[slot] = entry;
                    self.wanted.push(Wanted { first, user: position, how });
                    if user.display_name.is_none() {
                        if let Some(name) = contact.name() {
                            self.wanted_names.insert(entry, name);
                        }
                    }
                }
            }
            Resolution::Ambiguous(found, how) => {
                let mut names: Vec<String> = found.iter().map(|u| format!("{} ({})", u.upn, u.id)).collect();
                names.sort();
                self.not_acted_on.push(skipped_contact(
                    SkipKind::Ambiguous,
                    contact,
                    format!("{} users have this {}: {}", found.len(), how.label(), names.join(", ")),
                ));
            }
            Resolution::NotFound => self.not_acted_on.push(skipped_contact(
                SkipKind::Unresolved,
                contact,
                "no user has this address as userPrincipalName, mail or proxy address".into(),
            )),
        }
    }

    /// Takes in the next member of the group. Users are diffed, other objects are reported and left alone. A user
    /// member listed twice counts once, with its last row.
    pub fn add_member(&mut self, member: &GroupMember) {
        if member.kind != MemberKind::User {
            self.not_acted_on.push(Skipped {
                kind: SkipKind::NonUserMember,
                email: None,
                object_id: Some(member.id.clone()),
                upn: member.upn.clone().filter(|u| !u.is_empty()),
                display_name: member.display_name.clone(),
                source_line: member.source_line,
                detail: format!("a {} is never added or removed by writeback", member.kind.label()),
            });
            return;
        }
        self.member_ids.push(member.id.clone());
        let Some(position) = self.index.position_of(&member.id) else {
            self.other_members.insert(member.id.clone(), member.clone());
            return;
        };
        let slot = &mut self.member_of_user[position as usize];
        if self.wanted_of_user[position as usize] != NONE {
            *slot = MEMBER_WANTED;
        } else if let Some(row) = self.member_rows.get_mut(*slot as usize) {
            *row = member.clone();
        } else {
            *slot = self.member_rows.len() as u32;
            self.member_rows.push(member.clone());
        }
    }

    /// The changes, the entries not acted on and the precondition.
    pub fn finish(self, options: &ReconcileOptions) -> Reconciliation {
        let Reconciler { users, index, mut not_acted_on, duplicates, .. } = self;
        let mut warnings = Vec::new();
        if duplicates > 0 {
            warnings.push(format!(
                "{duplicates} duplicate contact{} collapsed onto the first line that named the same address or user",
                if duplicates == 1 { "" } else { "s" }
            ));
        }
        let precondition = Precondition::from_ids(self.member_ids);

        // Adds: wanted users who are not members.
        let mut changes = Vec::new();
        for (entry, want) in self.wanted.iter().enumerate() {
            if self.member_of_user[index.canonical(want.user) as usize] != NONE {
                continue;
            }
            let user = &users[want.user as usize];
            let (line, address) = match self.firsts.get(want.first as usize) {
                Some(first) => (first.line, self.addresses.get(first.start..first.end)),
                None => (0, None),
            };
            let reason = format!("in the list (line {line}), not a member; matched by {}", want.how.label());
            if options.remove_only {
                not_acted_on.push(Skipped {
                    kind: SkipKind::SuppressedAdd,
                    email: Some(address.unwrap_or_default().to_string()),
                    object_id: Some(user.id.clone()),
                    upn: Some(user.upn.clone()),
                    display_name: user.display_name.clone(),
                    source_line: Some(line),
                    detail: reason,
                });
                continue;
            }
            changes.push(Change {
                action: Action::Add,
                user_id: user.id.clone(),
                upn: user.upn.clone(),
                mail: user.mail.clone(),
                display_name: user.display_name.clone().or_else(|| self.wanted_names.get(&(entry as u32)).cloned()),
                source_line: Some(line),
                reason,
                flags: flags_of(Some(user)),
            });
        }

        // Removes: user members nobody resolved to.
        let known_members = self
            .member_of_user
            .iter()
            .zip(&self.wanted_of_user)
            .enumerate()
            .filter(|(_, (_, &want))| want == NONE)
            .filter_map(|(user, (&row, _))| Some((self.member_rows.get(row as usize)?, users.get(user))));
        let other_members = self.other_members.values().map(|member| (member, None));
        for (member, known) in known_members.chain(other_members) {
            let upn = member.upn.clone().filter(|u| !u.is_empty()).or_else(|| known.map(|u| u.upn.clone()));
            let display_name = member.display_name.clone().or_else(|| known.and_then(|u| u.display_name.clone()));
            let kind = if options.keep.contains(&member.id, upn.as_deref()) {
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
                    upn,
                    display_name,
                    source_line: member.source_line,
                    detail: detail.into(),
                }),
                None => changes.push(Change {
                    action: Action::Remove,
                    user_id: member.id.clone(),
                    upn: upn.unwrap_or_default(),
                    mail: member.mail.clone().or_else(|| known.and_then(|u| u.mail.clone())),
                    display_name,
                    source_line: member.source_line,
                    reason: "a member, not in the list".into(),
                    flags: flags_of(known),
                }),
            }
        }

        changes.sort_by_cached_key(|c| (c.action, address_key(&c.upn), c.user_id.clone()));
        not_acted_on.sort_by(|a, b| {
            (a.kind, a.source_line, &a.object_id, &a.email).cmp(&(b.kind, b.source_line, &b.object_id, &b.email))
        });
        Reconciliation { changes, not_acted_on, precondition, warnings }
    }
}

/// Computes one group's changes. `users` is the part of the directory the contacts may resolve to (the whole
/// users export, or every user a Graph lookup returned); `members` is the group's current direct membership.
pub fn reconcile(
    contacts: &[Contact],
    users: &[DirectoryUser],
    members: &[GroupMember],
    options: &ReconcileOptions,
) -> Reconciliation {
    let mut reconciler = Reconciler::new(users);
    reconciler.reserve(contacts.len(), members.len());
    for contact in contacts {
        reconciler.add_contact(contact);
    }
    for member in members {
        reconciler.add_member(member);
    }
    reconciler.finish(options)
}

fn skipped_contact(kind: SkipKind, contact: &Contact, detail: String) -> Skipped {
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

fn flags_of(user: Option<&DirectoryUser>) -> Vec<Flag> {
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
    use crate::directory::UserType;

    fn oid(n: u32) -> ObjectId {
        ObjectId::parse(&format!("00000000-0000-0000-0000-{n:012}")).unwrap()
    }

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
    fn address_hashes_agree_with_the_comparison_key() {
        for raw in [
            "a@x.com",
            "  Ada.Lovelace@Contoso.COM ",
            "\tMIXED.case.address.longer.than.eight@Example.Org",
            "Åsa.Öberg@Contoso.example",
            "\u{212A}elvin@x.com",
        ] {
            let key = address_key(raw);
            assert_eq!(address_hash(raw), Some(key_hash(&key)), "{raw:?}");
            assert!(same_address(raw, &key), "{raw:?}");
            assert!(!same_address(raw, "other@x.com"), "{raw:?}");
        }
        assert_eq!(address_hash("   "), None);
        assert!(!same_address("a@x.com", "a@x.co"));
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
