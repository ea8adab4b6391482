//! The lookup tables of a reconciliation: users by address and by object id, and the list's addresses already
//! seen. Tables hold 32-bit hashes and positions only; every candidate is confirmed against the real address or
//! id, so a hash collision costs a comparison, never a wrong answer.

use crate::directory::user_table::{touch, UserRef, UserTable};
use crate::identity::{address_key, trim};

/// No entry.
pub(super) const NONE: u32 = u32::MAX;

/// How a contact was matched to its user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum MatchedBy {
    Upn = 0,
    Mail = 1,
    ProxyAddress = 2,
}

impl MatchedBy {
    fn from_tag(tag: u32) -> MatchedBy {
        match tag & 3 {
            0 => MatchedBy::Upn,
            1 => MatchedBy::Mail,
            _ => MatchedBy::ProxyAddress,
        }
    }

    /// True when the user has `key` (a normalized address) as this kind of address.
    fn matches(self, user: &UserRef<'_>, key: &str) -> bool {
        match self {
            MatchedBy::Upn => same_address(user.upn(), key),
            MatchedBy::Mail => user.mail().is_some_and(|m| same_address(m, key)),
            MatchedBy::ProxyAddress => user.smtp_addresses().any(|a| same_address(a, key)),
        }
    }

    /// The name of the attribute, for reasons and details.
    pub(super) fn label(self) -> &'static str {
        match self {
            MatchedBy::Upn => "userPrincipalName",
            MatchedBy::Mail => "mail",
            MatchedBy::ProxyAddress => "proxy address",
        }
    }
}

/// A fast, non-cryptographic hasher for the large in-memory tables of one run (FxHash's multiply-and-rotate over
/// 8-byte words, with a final mix so that the low and high bits both vary).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct FastHasher(u64);

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

    fn finish32(&self) -> u32 {
        std::hash::Hasher::finish(self) as u32
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

    fn write_u128(&mut self, n: u128) {
        self.add(n as u64);
        self.add((n >> 64) as u64);
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

/// A hash map with [`FastHasher`], for the small maps of a run.
pub(super) type FastMap<K, V> = std::collections::HashMap<K, V, std::hash::BuildHasherDefault<FastHasher>>;

/// The hash of an address's comparison key ([`address_key`]), without building the key when the address is
/// ASCII. `None` when the key is empty.
pub(super) fn address_hash(raw: &str) -> Option<u32> {
    let trimmed = trim(raw);
    if trimmed.is_empty() {
        return None;
    }
    let mut hasher = FastHasher::default();
    if trimmed.is_ascii() {
        hasher.add_bytes(trimmed.as_bytes(), |b| b.to_ascii_lowercase());
    } else {
        hasher.add_bytes(address_key(trimmed).as_bytes(), |b| b);
    }
    Some(hasher.finish32())
}

/// The hash of a key that is already normalized (an [`crate::identity::Email`]): equal to [`address_hash`] of any
/// spelling of it.
pub(super) fn key_hash(key: &str) -> u32 {
    let mut hasher = FastHasher::default();
    hasher.add_bytes(key.as_bytes(), |b| b);
    hasher.finish32()
}

/// The hash of an object id.
pub(super) fn id_hash(id: u128) -> u32 {
    let mut hasher = FastHasher::default();
    std::hash::Hasher::write_u128(&mut hasher, id);
    hasher.finish32()
}

/// True when `raw`'s comparison key ([`address_key`]) is `key`.
pub(super) fn same_address(raw: &str, key: &str) -> bool {
    let trimmed = trim(raw);
    if trimmed.is_ascii() {
        trimmed.len() == key.len() && trimmed.bytes().zip(key.bytes()).all(|(a, b)| a.to_ascii_lowercase() == b)
    } else {
        address_key(trimmed) == key
    }
}

/// Values (below [`NONE`]) by a 32-bit hash, with repeats: one flat open-addressing table (linear probing, at most
/// 5/8 full), so a lookup is usually one cache miss.
#[derive(Debug, Default)]
pub(super) struct HashMultimap {
    /// (hash, value); value [`NONE`] marks a free slot.
    slots: Vec<(u32, u32)>,
    len: usize,
}

impl HashMultimap {
    /// A table for about `capacity` entries.
    pub(super) fn with_capacity(capacity: usize) -> HashMultimap {
        let mut map = HashMultimap::default();
        map.grow_to(capacity);
        map
    }

    fn grow_to(&mut self, capacity: usize) {
        let slots = (capacity.max(8) * 8 / 5).next_power_of_two();
        if slots <= self.slots.len() {
            return;
        }
        let old = std::mem::replace(&mut self.slots, vec![(0, NONE); slots]);
        for (hash, value) in old {
            if value != NONE {
                self.place(hash, value);
            }
        }
    }

    fn place(&mut self, hash: u32, value: u32) {
        let mask = self.slots.len() - 1;
        let mut at = hash as usize & mask;
        while self.slots[at].1 != NONE {
            at = (at + 1) & mask;
        }
        self.slots[at] = (hash, value);
    }

    /// Makes room for `additional` more entries.
    pub(super) fn reserve(&mut self, additional: usize) {
        self.grow_to(self.len + additional);
    }

    /// Adds `value` under `hash` (beside any values already there).
    pub(super) fn insert(&mut self, hash: u32, value: u32) {
        if (self.len + 1) * 8 > self.slots.len() * 5 {
            self.grow_to((self.len + 1) * 2);
        }
        self.place(hash, value);
        self.len += 1;
    }

    /// The values inserted under `hash`.
    pub(super) fn get(&self, hash: u32) -> impl Iterator<Item = u32> + '_ {
        let mask = self.slots.len().wrapping_sub(1);
        let mut at = hash as usize & mask;
        let mut done = self.slots.is_empty();
        std::iter::from_fn(move || {
            while !done {
                let (h, value) = self.slots[at];
                if value == NONE {
                    done = true;
                    return None;
                }
                at = (at + 1) & mask;
                if h == hash {
                    return Some(value);
                }
            }
            None
        })
    }

    /// Starts reading the slot where `hash` is looked up from memory (see [`touch`]).
    pub(super) fn touch(&self, hash: u32) {
        if let Some(slot) = self.slots.get(hash as usize & self.slots.len().wrapping_sub(1)) {
            touch(slot);
        }
    }

    /// Replaces the first value under `hash` for which `is` holds; false when there is none.
    fn replace(&mut self, hash: u32, value: u32, is: impl Fn(u32) -> bool) -> bool {
        if self.slots.is_empty() {
            return false;
        }
        let mask = self.slots.len() - 1;
        let mut at = hash as usize & mask;
        loop {
            let (h, old) = self.slots[at];
            if old == NONE {
                return false;
            }
            if h == hash && is(old) {
                self.slots[at].1 = value;
                return true;
            }
            at = (at + 1) & mask;
        }
    }
}

/// A contact's address as the directory resolves it.
pub(super) enum Resolution {
    /// The user's position, and how the address matched. A UPN match may leave other users holding the address
    /// as mail or proxy address in the lookup's `found` (see [`UserIndex::resolve`]).
    Found(u32, MatchedBy),
    /// Two or more different users at the same level, each once with how it matched, in directory order.
    Ambiguous(Vec<(u32, MatchedBy)>),
    NotFound,
}

/// Users indexed by their lowercase UPN, mail and smtp proxy addresses, and by object id.
///
/// One table holds all three kinds of address; each entry is the user's position times four plus the
/// [`MatchedBy`] rule (positions stay far below 2^30: a users export is at most 2 GiB). A user's `mail` is left out
/// when it is the user's UPN (the table of users already leaves out proxy addresses that are its UPN or mail).
#[derive(Debug)]
pub struct UserIndex<'t> {
    users: &'t UserTable,
    by_address: HashMultimap,
    by_id: HashMultimap,
    /// True when two users share an object id (then the last one stands for the id).
    repeated_ids: bool,
}

impl<'t> UserIndex<'t> {
    /// Indexes `users`. With many users, the id table is built on a second thread while this one builds the
    /// address table (both are bound by memory latency, so two cores nearly halve the time).
    pub fn new(users: &'t UserTable) -> UserIndex<'t> {
        const PARALLEL_FROM: usize = 50_000;
        let (by_address, (by_id, repeated_ids)) = if users.len() >= PARALLEL_FROM {
            std::thread::scope(|scope| {
                let ids = scope.spawn(|| id_table(users));
                let by_address = address_table(users);
                // The thread only builds a table; should it ever panic, build the table here instead.
                (by_address, ids.join().unwrap_or_else(|_| id_table(users)))
            })
        } else {
            (address_table(users), id_table(users))
        };
        UserIndex { users, by_address, by_id, repeated_ids }
    }

    /// The users this index is over.
    pub fn users(&self) -> &'t UserTable {
        self.users
    }

    /// The position of the user that stands for this object id (the last user with it).
    pub fn position_of(&self, id: u128) -> Option<u32> {
        self.position_of_hashed(id, id_hash(id))
    }

    /// The position that stands for the user at `position`: itself, unless a later user has the same id.
    pub(super) fn canonical(&self, position: u32) -> u32 {
        if self.repeated_ids {
            self.users.id_at(position as usize).and_then(|id| self.position_of(id)).unwrap_or(position)
        } else {
            position
        }
    }

    /// Starts the memory reads a lookup of `hash` (an address's) will need: its slot first.
    pub(super) fn touch_address(&self, hash: u32) {
        self.by_address.touch(hash);
    }

    /// After [`UserIndex::touch_address`]: the reads of the first user the lookup will look at; gives that user's
    /// position.
    pub(super) fn touch_address_user(&self, hash: u32) -> Option<u32> {
        let position = self.by_address.get(hash).next()? / 4;
        let start = self.users.touch_row(position as usize)?;
        self.users.touch_text(start);
        Some(position)
    }

    /// Starts the memory reads a lookup of an id (its hash) will need: its slot first.
    pub(super) fn touch_id(&self, hash: u32) {
        self.by_id.touch(hash);
    }

    /// After [`UserIndex::touch_id`]: the reads of the user found; gives its position.
    pub(super) fn touch_id_user(&self, hash: u32) -> Option<u32> {
        let position = self.by_id.get(hash).next()?;
        touch(self.users.ids().get(position as usize)?);
        let start = self.users.touch_row(position as usize)?;
        self.users.touch_text(start);
        Some(position)
    }

    /// The position of the user with this id (and its hash, from [`id_hash`]).
    pub(super) fn position_of_hashed(&self, id: u128, hash: u32) -> Option<u32> {
        self.by_id.get(hash).find(|&p| self.users.id_at(p as usize) == Some(id))
    }

    /// Resolves a normalized address. Two levels, and the first that finds anyone decides: the userPrincipalName,
    /// then `mail` and `smtp:` proxy addresses together (Exchange keeps a primary address in both, so one user's
    /// mail that is another's proxy address is a conflict, not a preference). Two different users at the deciding
    /// level make the address ambiguous. `found` is left holding every (rule, position) that matched, sorted: on a
    /// UPN match, the entries after the first are the other users who hold the address as mail or proxy.
    pub(super) fn resolve(&self, key: &str, hash: u32, found: &mut Vec<(MatchedBy, u32)>) -> Resolution {
        found.clear();
        for entry in self.by_address.get(hash) {
            let (how, position) = (MatchedBy::from_tag(entry), entry / 4);
            if self.users.get(position as usize).is_some_and(|user| how.matches(&user, key)) {
                found.push((how, position));
            }
        }
        if found.len() > 1 {
            found.sort_unstable();
            found.dedup();
        }
        let Some(&(how, position)) = found.first() else { return Resolution::NotFound };
        // The level of the first match: the UPN alone, or mail and proxy addresses as one.
        let level = |h: MatchedBy| h == MatchedBy::Upn;
        let at_level = || found.iter().take_while(|(h, _)| level(*h) == level(how));
        if at_level().all(|&(_, p)| p == position || self.canonical(p) == self.canonical(position)) {
            return Resolution::Found(position, how);
        }
        // Each user once (a user holding the address both ways is named by the first way), in directory order.
        let mut users: Vec<(u32, MatchedBy)> = Vec::new();
        for &(h, p) in at_level() {
            if !users.iter().any(|&(q, _)| q == p) {
                users.push((p, h));
            }
        }
        users.sort_unstable_by_key(|&(p, _)| p);
        Resolution::Ambiguous(users)
    }
}

/// How many lookups or inserts start their memory reads together (see [`touch`]).
pub(super) const GROUP: usize = 16;

/// Users by object id (the last user with an id stands for it), and whether any id repeats.
fn id_table(users: &UserTable) -> (HashMultimap, bool) {
    let ids = users.ids();
    let mut by_id = HashMultimap::with_capacity(ids.len());
    let mut repeated = false;
    for (group, chunk) in ids.chunks(GROUP).enumerate() {
        let hashes: Vec<u32> = chunk.iter().map(|&id| id_hash(id)).collect();
        hashes.iter().for_each(|&hash| by_id.touch(hash));
        for (i, (&id, &hash)) in chunk.iter().zip(&hashes).enumerate() {
            let position = (group * GROUP + i) as u32;
            if by_id.replace(hash, position, |p| ids.get(p as usize) == Some(&id)) {
                repeated = true;
            } else {
                by_id.insert(hash, position);
            }
        }
    }
    (by_id, repeated)
}

/// Positions in a [`UserTable`] by object id, for a table that is still being filled: one 8-byte slot per user (a
/// general hash map of ids took 32 and more), each hit confirmed against the table's id. An id added again stands
/// for its last position, as in [`UserIndex::position_of`].
#[derive(Debug, Default)]
pub struct IdPositions {
    by_id: HashMultimap,
}

impl IdPositions {
    /// The positions of every user in `users`.
    pub fn of(users: &UserTable) -> IdPositions {
        IdPositions { by_id: id_table(users).0 }
    }

    /// Records that the user with `id` is at `position` of `users` (and no longer at an earlier one).
    pub fn insert(&mut self, users: &UserTable, id: u128, position: u32) {
        let hash = id_hash(id);
        if !self.by_id.replace(hash, position, |p| users.id_at(p as usize) == Some(id)) {
            self.by_id.insert(hash, position);
        }
    }

    /// The position of the user with `id` in `users`, if it was recorded.
    pub fn get(&self, users: &UserTable, id: u128) -> Option<u32> {
        self.by_id.get(id_hash(id)).find(|&p| users.id_at(p as usize) == Some(id))
    }
}

/// Users by the hash of each address they can be matched by.
fn address_table(users: &UserTable) -> HashMultimap {
    let mut by_address = HashMultimap::with_capacity(users.len() * 2);
    let mut entries: Vec<(u32, u32)> = Vec::with_capacity(GROUP * 4);
    for (position, user) in users.iter().enumerate() {
        let position = position as u32;
        let mut add = |address: &str, how: MatchedBy| {
            if let Some(hash) = address_hash(address) {
                entries.push((hash, position.wrapping_mul(4) | how as u32));
            }
        };
        add(user.upn(), MatchedBy::Upn);
        if let Some(mail) = user.mail() {
            if !crate::identity::same_address_key(mail, user.upn()) {
                add(mail, MatchedBy::Mail);
            }
        }
        for address in user.smtp_addresses() {
            add(address, MatchedBy::ProxyAddress);
        }
        if entries.len() >= GROUP * 2 {
            insert_group(&mut by_address, &mut entries);
        }
    }
    insert_group(&mut by_address, &mut entries);
    by_address
}

/// Inserts `entries` (hash, value), starting their slots' memory reads first; empties `entries`.
fn insert_group(map: &mut HashMultimap, entries: &mut Vec<(u32, u32)>) {
    map.reserve(entries.len());
    entries.iter().for_each(|&(hash, _)| map.touch(hash));
    entries.drain(..).for_each(|(hash, value)| map.insert(hash, value));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multimap_keeps_repeats_and_grows() {
        let mut map = HashMultimap::default();
        for value in 0..1000 {
            map.insert(value % 10, value);
        }
        let mut sevens: Vec<u32> = map.get(7).collect();
        sevens.sort_unstable();
        assert_eq!(sevens, (0..100).map(|n| n * 10 + 7).collect::<Vec<_>>());
        assert_eq!(map.get(12).count(), 0);
        assert!(map.replace(7, 5000, |v| v == 507));
        assert!(map.get(7).any(|v| v == 5000) && !map.get(7).any(|v| v == 507));
        assert!(!map.replace(12, 1, |_| true));
        assert_eq!(HashMultimap::default().get(3).count(), 0);
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
}
