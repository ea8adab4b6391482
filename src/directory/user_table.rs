//! The directory's users held compactly, for resolving a list of a million addresses: all of their text in one
//! buffer and a fixed-size row per user, instead of several heap strings per user (a million users from an export
//! took about 470 MB as [`DirectoryUser`]s; here they take about a quarter of that, in a handful of allocations).
//!
//! The table keeps what resolution and the plan need: the object id, the UPN, display name and `mail` as the
//! directory spells them, the user type, whether the account is enabled, and the `smtp:` proxy addresses. Proxy
//! addresses of other types (`x500:`, `sip:`, …), and `smtp:` addresses whose comparison key is the user's own UPN or
//! `mail`, are left out: they can never make an address resolve differently.

use crate::directory::{DirectoryUser, UserType};
use crate::identity::{same_address_key, smtp_proxy_address, ObjectId};

/// Users, in the order they were added; a user is known by its position.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserTable {
    ids: Vec<u128>,
    rows: Vec<Row>,
    text: String,
}

/// Where one user's text is in [`UserTable::text`]: the UPN, then the display name, then `mail` (unless it is the
/// UPN, byte for byte), then the kept proxy addresses, each followed by [`PROXY_END`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Row {
    start: u32,
    upn_end: u32,
    display_end: u32,
    mail_end: u32,
    proxies_end: u32,
    flags: u8,
}

const HAS_DISPLAY_NAME: u8 = 1;
const HAS_MAIL: u8 = 2;
const MAIL_IS_UPN: u8 = 4;
const MEMBER: u8 = 8;
const GUEST: u8 = 16;
const ENABLED_KNOWN: u8 = 32;
const ENABLED: u8 = 64;

/// Ends each kept proxy address in the text. An address containing it can never match an e-mail address (it is a
/// control character), so such an address is not kept.
const PROXY_END: char = '\n';

/// The table's text would pass 4 GiB (far beyond any directory: exports are read up to 2 GiB).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the users take more than 4 GiB of text")]
pub struct TableFull;

/// One user's fields, borrowed, for [`UserTable::push`].
#[derive(Debug, Clone, Copy)]
pub struct UserFields<'a, P> {
    /// The object id ([`ObjectId::to_u128`]).
    pub id: u128,
    /// userPrincipalName.
    pub upn: &'a str,
    /// displayName.
    pub display_name: Option<&'a str>,
    /// mail.
    pub mail: Option<&'a str>,
    /// Member or guest.
    pub user_type: UserType,
    /// accountEnabled.
    pub account_enabled: Option<bool>,
    /// Every proxy address, as written (`SMTP:a@b.com`, `x500:…`).
    pub proxy_addresses: P,
}

impl UserTable {
    /// An empty table.
    pub fn new() -> UserTable {
        UserTable::default()
    }

    /// An empty table with room for `users` users and `text` bytes of their text.
    pub fn with_capacity(users: usize, text: usize) -> UserTable {
        UserTable { ids: Vec::with_capacity(users), rows: Vec::with_capacity(users), text: String::with_capacity(text) }
    }

    /// The table of `users`, in order.
    pub fn from_users(users: &[DirectoryUser]) -> Result<UserTable, TableFull> {
        let mut table = UserTable::with_capacity(users.len(), 0);
        for user in users {
            table.push_user(user)?;
        }
        Ok(table)
    }

    /// Adds one user.
    pub fn push_user(&mut self, user: &DirectoryUser) -> Result<(), TableFull> {
        self.push(UserFields {
            id: user.id.to_u128(),
            upn: &user.upn,
            display_name: user.display_name.as_deref(),
            mail: user.mail.as_deref(),
            user_type: user.user_type,
            account_enabled: user.account_enabled,
            proxy_addresses: user.proxy_addresses.iter().map(String::as_str),
        })
    }

    /// Adds one user.
    pub fn push<'a, P: Iterator<Item = &'a str>>(&mut self, user: UserFields<'a, P>) -> Result<(), TableFull> {
        let mark = self.text.len();
        let result = self.push_text(user);
        if result.is_err() {
            self.text.truncate(mark);
        }
        result
    }

    fn push_text<'a, P: Iterator<Item = &'a str>>(&mut self, user: UserFields<'a, P>) -> Result<(), TableFull> {
        let offset = |text: &String| u32::try_from(text.len()).map_err(|_| TableFull);
        let mut flags = 0;
        let start = offset(&self.text)?;
        self.text.push_str(user.upn);
        let upn_end = offset(&self.text)?;
        if let Some(name) = user.display_name {
            flags |= HAS_DISPLAY_NAME;
            self.text.push_str(name);
        }
        let display_end = offset(&self.text)?;
        if let Some(mail) = user.mail {
            flags |= HAS_MAIL;
            if mail == user.upn {
                flags |= MAIL_IS_UPN;
            } else {
                self.text.push_str(mail);
            }
        }
        let mail_end = offset(&self.text)?;
        for proxy in user.proxy_addresses {
            let Some(address) = smtp_proxy_address(proxy) else { continue };
            let own = same_address_key(address, user.upn) || user.mail.is_some_and(|m| same_address_key(address, m));
            if !own && !address.contains(PROXY_END) {
                self.text.push_str(address);
                self.text.push(PROXY_END);
            }
        }
        let proxies_end = offset(&self.text)?;
        flags |= match user.user_type {
            UserType::Member => MEMBER,
            UserType::Guest => GUEST,
            UserType::Unknown => 0,
        };
        flags |= match user.account_enabled {
            Some(true) => ENABLED_KNOWN | ENABLED,
            Some(false) => ENABLED_KNOWN,
            None => 0,
        };
        self.ids.push(user.id);
        self.rows.push(Row { start, upn_end, display_end, mail_end, proxies_end, flags });
        Ok(())
    }

    /// True when the user at `position` is `user` as far as the table can tell (the same id, UPN, display name,
    /// mail, type, account state and kept proxy addresses): adding `user` would change no resolution or plan.
    pub fn holds(&self, position: usize, user: &DirectoryUser) -> bool {
        let mut one = UserTable::with_capacity(1, 0);
        if one.push_user(user).is_err() {
            return false;
        }
        match (self.get(position), one.get(0)) {
            (Some(a), Some(b)) => {
                a.id_u128() == b.id_u128()
                    && a.upn() == b.upn()
                    && a.display_name() == b.display_name()
                    && a.mail() == b.mail()
                    && a.user_type() == b.user_type()
                    && a.account_enabled() == b.account_enabled()
                    && a.smtp_addresses().eq(b.smtp_addresses())
            }
            _ => false,
        }
    }

    /// How many users the table holds.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when the table holds no user.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The user at `position`, if there is one.
    pub fn get(&self, position: usize) -> Option<UserRef<'_>> {
        Some(UserRef { ids: &self.ids, position, row: *self.rows.get(position)?, text: &self.text })
    }

    /// The object id of the user at `position` ([`ObjectId::to_u128`]).
    pub fn id_at(&self, position: usize) -> Option<u128> {
        self.ids.get(position).copied()
    }

    /// The users' object ids, by position ([`ObjectId::to_u128`]).
    pub fn ids(&self) -> &[u128] {
        &self.ids
    }

    /// Every user, in order.
    pub fn iter(&self) -> impl Iterator<Item = UserRef<'_>> + '_ {
        self.rows.iter().enumerate().map(|(position, &row)| UserRef { ids: &self.ids, position, row, text: &self.text })
    }

    /// Starts reading the row of the user at `position` from memory (see [`touch`]); gives where its text starts.
    pub fn touch_row(&self, position: usize) -> Option<u32> {
        let row = self.rows.get(position)?;
        touch(row);
        Some(row.start)
    }

    /// Starts reading the text at `start` (from [`UserTable::touch_row`]) from memory.
    pub fn touch_text(&self, start: u32) {
        if let Some(byte) = self.text.as_bytes().get(start as usize) {
            touch(byte);
        }
    }

    /// Appends to `out` the proxy addresses `proxies` of the user at `position`, in as few bytes as the table
    /// allows: an `SMTP:`/`smtp:` address that is the user's UPN, `mail` or next kept address takes one byte; any
    /// other is kept whole. [`UserTable::write_proxies_json`] gives them back exactly, in order.
    pub fn encode_proxies<'a>(&self, position: usize, proxies: impl IntoIterator<Item = &'a str>, out: &mut Vec<u8>) {
        let user = self.get(position);
        let mut kept = user.map(|u| u.smtp_addresses()).into_iter().flatten().peekable();
        for proxy in proxies {
            let prefixed = match (proxy.strip_prefix("SMTP:"), proxy.strip_prefix("smtp:")) {
                (Some(address), _) => Some((0, address)),
                (_, Some(address)) => Some((1, address)),
                _ => None,
            };
            let tag = match (user, prefixed) {
                (Some(_), Some((case, address))) if kept.peek() == Some(&address) => {
                    kept.next();
                    Some(KEPT_PROXY + case)
                }
                (Some(u), Some((case, address))) if u.upn() == address => Some(UPN_PROXY + case),
                (Some(u), Some((case, address))) if u.mail() == Some(address) => Some(MAIL_PROXY + case),
                _ => None,
            };
            match tag {
                Some(tag) => out.push(tag),
                None => {
                    out.push(LITERAL);
                    push_length(out, proxy.len());
                    out.extend_from_slice(proxy.as_bytes());
                }
            }
        }
    }

    /// Appends the JSON array (compact, as `serde_json` writes a list of strings) of the proxy addresses that
    /// [`UserTable::encode_proxies`] encoded for the user at `position`. `None` when `encoded` is not such an
    /// encoding for this table.
    pub fn write_proxies_json(&self, position: usize, mut encoded: &[u8], out: &mut Vec<u8>) -> Option<()> {
        let user = self.get(position)?;
        let mut kept = user.smtp_addresses();
        let mut proxy = String::new();
        out.push(b'[');
        let mut first = true;
        while let Some((&tag, rest)) = encoded.split_first() {
            encoded = rest;
            proxy.clear();
            if tag == LITERAL {
                let (length, rest) = read_length(encoded)?;
                let (bytes, rest) = rest.split_at_checked(length)?;
                proxy.push_str(std::str::from_utf8(bytes).ok()?);
                encoded = rest;
            } else {
                proxy.push_str(if (tag - 1) % 2 == 0 { "SMTP:" } else { "smtp:" });
                proxy.push_str(match (tag - 1) / 2 {
                    0 => user.upn(),
                    1 => user.mail()?,
                    2 => kept.next()?,
                    _ => return None,
                });
            }
            if !first {
                out.push(b',');
            }
            first = false;
            // Writing a string as JSON into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, &proxy);
        }
        out.push(b']');
        Some(())
    }

    /// Gives back the spare capacity (the table is read-only once filled).
    pub fn shrink_to_fit(&mut self) {
        self.ids.shrink_to_fit();
        self.rows.shrink_to_fit();
        self.text.shrink_to_fit();
    }
}

/// Tags of [`UserTable::encode_proxies`]: a whole address (its length, then its bytes), or `SMTP:` (+0) / `smtp:`
/// (+1) and the user's UPN, `mail` or next kept address.
const LITERAL: u8 = 0;
const UPN_PROXY: u8 = 1;
const MAIL_PROXY: u8 = 3;
const KEPT_PROXY: u8 = 5;

/// Appends `length` seven bits at a time, lowest first (LEB128).
fn push_length(out: &mut Vec<u8>, mut length: usize) {
    while length >= 0x80 {
        out.push((length as u8 & 0x7f) | 0x80);
        length >>= 7;
    }
    out.push(length as u8);
}

/// Reads a length written by [`push_length`]; gives it and the bytes after it.
fn read_length(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let mut length = 0usize;
    for (i, &byte) in bytes.iter().enumerate().take(10) {
        length |= usize::from(byte & 0x7f).checked_shl(7 * i as u32)?;
        if byte & 0x80 == 0 {
            return Some((length, bytes.get(i + 1..)?));
        }
    }
    None
}

/// Reads `value` now, so that its cache line is on its way before it is needed. Tables of a million entries do
/// not fit in the processor's caches: looking up one entry after another waits for memory each time, while reading
/// the entries a group of lookups will need first lets those reads overlap (a dozen at once), a few times faster.
pub(crate) fn touch<T: Copy>(value: &T) {
    std::hint::black_box(*value);
}

/// One user of a [`UserTable`].
#[derive(Debug, Clone, Copy)]
pub struct UserRef<'t> {
    /// The table's ids: one is read only when asked for (it is a memory read of its own).
    ids: &'t [u128],
    position: usize,
    row: Row,
    text: &'t str,
}

impl<'t> UserRef<'t> {
    fn span(&self, start: u32, end: u32) -> &'t str {
        self.text.get(start as usize..end as usize).unwrap_or_default()
    }

    /// The object id.
    pub fn id(&self) -> ObjectId {
        ObjectId::from_u128(self.id_u128())
    }

    /// The object id as a number ([`ObjectId::to_u128`]).
    pub fn id_u128(&self) -> u128 {
        self.ids.get(self.position).copied().unwrap_or_default()
    }

    /// userPrincipalName, as the directory spells it.
    pub fn upn(&self) -> &'t str {
        self.span(self.row.start, self.row.upn_end)
    }

    /// displayName, when known.
    pub fn display_name(&self) -> Option<&'t str> {
        (self.row.flags & HAS_DISPLAY_NAME != 0).then(|| self.span(self.row.upn_end, self.row.display_end))
    }

    /// mail, when set.
    pub fn mail(&self) -> Option<&'t str> {
        match self.row.flags & (HAS_MAIL | MAIL_IS_UPN) {
            0 => None,
            HAS_MAIL => Some(self.span(self.row.display_end, self.row.mail_end)),
            _ => Some(self.upn()),
        }
    }

    /// The `smtp:` proxy addresses (without the prefix) other than the UPN and `mail`.
    pub fn smtp_addresses(&self) -> impl Iterator<Item = &'t str> {
        self.span(self.row.mail_end, self.row.proxies_end).split_terminator(PROXY_END)
    }

    /// Member, guest or unknown.
    pub fn user_type(&self) -> UserType {
        if self.row.flags & MEMBER != 0 {
            UserType::Member
        } else if self.row.flags & GUEST != 0 {
            UserType::Guest
        } else {
            UserType::Unknown
        }
    }

    /// accountEnabled, when known.
    pub fn account_enabled(&self) -> Option<bool> {
        (self.row.flags & ENABLED_KNOWN != 0).then_some(self.row.flags & ENABLED != 0)
    }

    /// True for B2B guests, as [`DirectoryUser::is_guest`].
    pub fn is_guest(&self) -> bool {
        self.user_type() == UserType::Guest
            || self.upn().as_bytes().windows(5).any(|w| w.eq_ignore_ascii_case(b"#EXT#"))
    }

    /// True when the account is known to be disabled.
    pub fn is_disabled(&self) -> bool {
        self.account_enabled() == Some(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(n: u32, upn: &str, mail: Option<&str>, proxies: &[&str]) -> DirectoryUser {
        DirectoryUser {
            id: crate::fixtures::id(n),
            upn: upn.into(),
            display_name: n.is_multiple_of(2).then(|| format!("User {n}")),
            mail: mail.map(str::to_string),
            user_type: [UserType::Member, UserType::Guest, UserType::Unknown][n as usize % 3],
            account_enabled: [Some(true), Some(false), None][n as usize % 3],
            proxy_addresses: proxies.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn fields_come_back_as_given() {
        let users = vec![
            user(0, "a@x.example", Some("a@x.example"), &["SMTP:A@x.example", "smtp:alias@x.example", "x500:/o=X"]),
            user(1, "b_y#EXT#@x.example", Some("B@y.example"), &["smtp:b@y.example", " smtp: other@y.example "]),
            user(2, "c@x.example", None, &[]),
            user(3, "d@x.example", Some(""), &["SMTP:two\nlines@x.example"]),
        ];
        let table = UserTable::from_users(&users).unwrap();
        assert_eq!(table.len(), 4);
        for (user, row) in users.iter().zip(table.iter()) {
            assert_eq!(row.id(), user.id);
            assert_eq!(row.upn(), user.upn);
            assert_eq!(row.display_name(), user.display_name.as_deref());
            assert_eq!(row.mail(), user.mail.as_deref());
            assert_eq!(row.user_type(), user.user_type);
            assert_eq!(row.account_enabled(), user.account_enabled);
            assert_eq!(row.is_guest(), user.is_guest(), "{}", user.upn);
            assert_eq!(row.is_disabled(), user.is_disabled());
        }
        let proxies: Vec<Vec<&str>> = table.iter().map(|u| u.smtp_addresses().collect()).collect();
        assert_eq!(proxies, vec![vec!["alias@x.example"], vec!["other@y.example"], vec![], vec![]]);
        assert!(table.get(4).is_none());
    }

    #[test]
    fn proxies_come_back_byte_for_byte() {
        let long = format!("X500:/o={}", "y".repeat(300));
        let users = vec![
            user(0, "a@x.example", Some("a@x.example"), &["SMTP:a@x.example", "smtp:alias@x.example", &long]),
            user(
                1,
                "b@x.example",
                Some("B@y.example"),
                &["smtp:B@y.example", "SMTP:b@x.example", " smtp: o@y.example "],
            ),
            user(2, "c@x.example", None, &[]),
            user(3, "d@x.example", Some("m@x.example"), &["SMTP:two\nlines@x.example", "Smtp:d@x.example", "smtp:"]),
            user(4, "e@x.example", None, &["smtp:k1@x.example", "smtp:k2@x.example", "SMTP:k1@x.example", "\u{1F600}"]),
        ];
        let table = UserTable::from_users(&users).unwrap();
        for (position, user) in users.iter().enumerate() {
            let mut encoded = Vec::new();
            table.encode_proxies(position, user.proxy_addresses.iter().map(String::as_str), &mut encoded);
            let mut json = Vec::new();
            table.write_proxies_json(position, &encoded, &mut json).unwrap();
            assert_eq!(json, serde_json::to_vec(&user.proxy_addresses).unwrap(), "{}", user.upn);
        }
        // The ordinary user's two addresses take a byte each.
        let mut encoded = Vec::new();
        table.encode_proxies(0, ["SMTP:a@x.example", "smtp:alias@x.example"], &mut encoded);
        assert_eq!(encoded.len(), 2);
        // A broken encoding is refused, never read past its end.
        assert!(table.write_proxies_json(0, &[LITERAL, 5, b'a'], &mut Vec::new()).is_none());
        assert!(table.write_proxies_json(2, &[MAIL_PROXY], &mut Vec::new()).is_none());
        assert!(table.write_proxies_json(0, &[200], &mut Vec::new()).is_none());
        assert!(table.write_proxies_json(9, &[], &mut Vec::new()).is_none());
    }
}
