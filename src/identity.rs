//! Small identity types, so that e-mail addresses, object ids and user principal names are never mixed up.
//!
//! Every comparison in writeback happens on the normalized form: e-mail addresses and UPNs are trimmed and
//! lowercased, object ids are lowercase GUIDs. The original spelling from the directory is kept separately
//! wherever a person will read it.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A normalized e-mail address: trimmed, lowercase, with exactly one `@` and a dotted domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Email(String);

/// Why a string is not an e-mail address writeback can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEmail {
    /// The cell was empty.
    #[error("the address is empty")]
    Empty,
    /// No `@`, or more than one.
    #[error("an address needs exactly one '@'")]
    At,
    /// Nothing before the `@`.
    #[error("nothing before the '@'")]
    LocalPart,
    /// The part after `@` is not a dotted domain.
    #[error("'{0}' is not a domain name")]
    Domain(String),
    /// Spaces, control characters, quotes or angle brackets inside the address.
    #[error("the address contains a space or a character that is not allowed")]
    Character,
}

impl Email {
    /// Normalizes and checks `raw`. Accepts what Entra accepts for `mail` and `userPrincipalName` in practice:
    /// `local@domain.tld`, with no spaces, quotes, angle brackets or control characters.
    pub fn parse(raw: &str) -> Result<Self, InvalidEmail> {
        let mut key = String::new();
        Email::normalize_into(raw, &mut key)?;
        Ok(Email(key))
    }

    /// Like [`Email::parse`], writing the normalized address into `key` (cleared first) instead of allocating one:
    /// for callers that check millions of addresses.
    pub fn normalize_into(raw: &str, key: &mut String) -> Result<(), InvalidEmail> {
        key.clear();
        let trimmed = trim(raw);
        if trimmed.is_empty() {
            return Err(InvalidEmail::Empty);
        }
        let not_allowed = |c: char| matches!(c, '"' | '<' | '>' | ',' | ';' | '(' | ')' | '[' | ']' | '\\');
        let bad = if trimmed.is_ascii() {
            key.push_str(trimmed);
            key.make_ascii_lowercase();
            // The ASCII characters that are whitespace or control characters are exactly those up to the space, and
            // DEL.
            key.bytes().any(|b| b <= b' ' || b == 0x7f || not_allowed(char::from(b)))
        } else {
            key.push_str(&trimmed.to_lowercase());
            key.chars().any(|c| c.is_whitespace() || c.is_control() || not_allowed(c))
        };
        if bad {
            return Err(InvalidEmail::Character);
        }
        let lower = key.as_str();
        let mut parts = lower.split('@');
        let (local, domain) = match (parts.next(), parts.next(), parts.next()) {
            (Some(local), Some(domain), None) => (local, domain),
            _ => return Err(InvalidEmail::At),
        };
        if local.is_empty() {
            return Err(InvalidEmail::LocalPart);
        }
        let labels_ok = domain.split('.').count() >= 2
            && domain.split('.').all(|label| !label.is_empty() && !label.starts_with('-') && !label.ends_with('-'));
        if !labels_ok {
            return Err(InvalidEmail::Domain(domain.to_string()));
        }
        Ok(())
    }

    /// The normalized address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A directory object id (a GUID), stored lowercase with hyphens.
///
/// Parsing rejects anything that is not a GUID, so an object id can be put into a Graph URL without escaping.
/// The 36 characters are held inline (no heap allocation): plans list up to millions of them. Ordering is that
/// of the text.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId([u8; 36]);

/// Where the hyphens of a GUID's canonical form are.
const HYPHENS: [usize; 4] = [8, 13, 18, 23];

/// The value of each ASCII hex digit (either case); 0xff for every other byte.
const HEX_VALUE: [u8; 256] = {
    let mut table = [0xff; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = match b as u8 {
            c @ b'0'..=b'9' => c - b'0',
            c @ b'a'..=b'f' => c - b'a' + 10,
            c @ b'A'..=b'F' => c - b'A' + 10,
            _ => 0xff,
        };
        b += 1;
    }
    table
};

/// Where the 32 hex digits of a GUID's canonical form are: the first 16, then the last 16.
const DIGITS: [[usize; 16]; 2] = [
    [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 14, 15, 16, 17],
    [19, 20, 21, 22, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35],
];

/// The value of a GUID written in its canonical form (8-4-4-4-12 hex digits, any case), the form of nearly every
/// id in an export; `None` for anything else.
///
/// Millions of ids are read per plan, and their digits and letters come in no predictable order, so each digit's
/// value is looked up in a table instead of chosen by branches, and each half is built in a 64-bit register.
fn hyphenated_value(bytes: &[u8]) -> Option<u128> {
    let bytes: &[u8; 36] = bytes.try_into().ok()?;
    if HYPHENS.iter().any(|&at| bytes[at] != b'-') {
        return None;
    }
    let mut invalid = 0u8;
    let [high, low] = DIGITS.map(|positions| {
        positions.iter().fold(0u64, |value, &at| {
            let digit = HEX_VALUE[usize::from(bytes[at])];
            invalid |= digit;
            (value << 4) | u64::from(digit & 0xf)
        })
    });
    (invalid & 0xf0 == 0).then_some((u128::from(high) << 64) | u128::from(low))
}

/// A string that is not a directory object id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not an object id (a GUID such as 1b4e28ba-2fa1-11d2-883f-0016d3cca427)")]
pub struct InvalidObjectId(pub String);

impl ObjectId {
    /// Parses a GUID in any case, with or without braces.
    pub fn parse(raw: &str) -> Result<Self, InvalidObjectId> {
        ObjectId::parse_u128(raw).map(ObjectId::from_u128)
    }

    /// Like [`ObjectId::parse`], giving the id as a number (see [`ObjectId::to_u128`]).
    pub fn parse_u128(raw: &str) -> Result<u128, InvalidObjectId> {
        let trimmed = trim(raw);
        if let Some(value) = hyphenated_value(trimmed.as_bytes()) {
            return Ok(value);
        }
        let uuid = uuid::Uuid::parse_str(trimmed.trim_start_matches('{').trim_end_matches('}'))
            .map_err(|_| InvalidObjectId(trimmed.to_string()))?;
        if trimmed.len() != 36 && trimmed.len() != 38 {
            // Reject the simple (no hyphen) and URN forms: Entra always writes the hyphenated form.
            return Err(InvalidObjectId(trimmed.to_string()));
        }
        Ok(uuid.as_u128())
    }

    /// The id whose number is `value`.
    pub fn from_u128(value: u128) -> ObjectId {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = [b'-'; 36];
        let mut digit = 0;
        for (at, byte) in text.iter_mut().enumerate() {
            if !HYPHENS.contains(&at) {
                *byte = HEX[((value >> (124 - 4 * digit)) & 0xf) as usize];
                digit += 1;
            }
        }
        ObjectId(text)
    }

    /// The id as a number: its 32 hex digits read as one. Ids order the same way as their numbers, so large sets
    /// of ids can be held and sorted as numbers (16 bytes each).
    pub fn to_u128(&self) -> u128 {
        self.0.iter().filter(|&&b| b != b'-').fold(0, |number, &b| {
            let digit = match b {
                b'0'..=b'9' => b - b'0',
                _ => b.wrapping_sub(b'a').wrapping_add(10) & 0xf,
            };
            (number << 4) | u128::from(digit)
        })
    }

    /// The id's first eight hex digits and an ellipsis (`1b4e28ba…`): what review tables show next to a UPN, so
    /// that a label naming one person over another object's id stands out.
    pub fn short(&self) -> String {
        let mut short = String::with_capacity(11);
        short.push_str(self.as_str().get(..8).unwrap_or_default());
        short.push('…');
        short
    }

    /// The canonical lowercase hyphenated form.
    pub fn as_str(&self) -> &str {
        // Only `parse` makes an ObjectId, and it writes ASCII hex digits and hyphens, so this never fails.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ObjectId").field(&self.as_str()).finish()
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ObjectId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ObjectId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        ObjectId::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// Who acted in Entra ID: the person or the application behind the Microsoft Graph token that read (for a plan)
/// or wrote (for an apply). Recorded in plans, receipts and the journal beside the SSH signer, so an auditor can
/// find the same actor in Entra's audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntraActor {
    /// A signed-in person, or an application (an app registration or a managed identity).
    #[serde(rename = "type")]
    pub kind: ActorKind,
    /// The person's object id, or the application's client id.
    pub id: String,
    /// The user principal name, or the application's display name, when the token says.
    pub name: Option<String>,
    /// The tenant the token was issued in (its `tid`).
    pub tenant_id: Option<String>,
    /// How writeback signed in (`azure-cli`, `secret`, …).
    pub auth: String,
}

/// A person or an application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActorKind {
    /// A person (a delegated token).
    User,
    /// An application (an application token).
    Application,
}

impl ActorKind {
    /// `user` or `application`.
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::User => "user",
            ActorKind::Application => "application",
        }
    }

    /// Parses [`ActorKind::as_str`].
    pub fn parse(raw: &str) -> Option<ActorKind> {
        match raw {
            "user" => Some(ActorKind::User),
            "application" => Some(ActorKind::Application),
            _ => None,
        }
    }
}

impl EntraActor {
    /// One line for tables: `user ada@contoso.example (id …, azure-cli)`.
    pub fn label(&self) -> String {
        let who = self.name.as_deref().unwrap_or(&self.id);
        let id = if self.name.is_some() { format!("id {}, ", self.id) } else { String::new() };
        format!("{} {who} ({id}{})", self.kind.as_str(), self.auth)
    }

    /// A short form for narrow tables: `user ada@contoso.example (azure-cli)`.
    pub fn short_label(&self) -> String {
        format!("{} {} ({})", self.kind.as_str(), self.name.as_deref().unwrap_or(&self.id), self.auth)
    }

    /// True when the actor's tenant is known and is not `tenant` (compared case-insensitively).
    pub fn other_tenant_than(&self, tenant: Option<&str>) -> bool {
        match (self.tenant_id.as_deref(), tenant) {
            (Some(mine), Some(theirs)) => !mine.eq_ignore_ascii_case(theirs),
            _ => false,
        }
    }
}

/// The comparison key of a user principal name or e-mail address: trimmed and lowercased.
///
/// Entra treats UPNs, `mail` and proxy addresses case-insensitively; writeback compares them on this key and
/// keeps the directory's own spelling for display.
pub fn address_key(raw: &str) -> String {
    raw.trim().to_lowercase()
}

/// The order of two addresses' comparison keys ([`address_key`]), without building the keys while the two are
/// ASCII up to where they differ.
///
/// Lowercasing never changes the bytes before a character, so an ASCII prefix the two share stays shared, and the
/// first differing pair of ASCII bytes decides as it would in the keys. Only when a non-ASCII character comes first
/// are the keys built (some lowercase to ASCII: the Kelvin sign to `k`).
pub fn cmp_address_keys(a: &str, b: &str) -> std::cmp::Ordering {
    let (a, b) = (trim(a), trim(b));
    for (x, y) in a.bytes().zip(b.bytes()) {
        if !x.is_ascii() || !y.is_ascii() {
            return address_key(a).cmp(&address_key(b));
        }
        match x.to_ascii_lowercase().cmp(&y.to_ascii_lowercase()) {
            std::cmp::Ordering::Equal => {}
            decided => return decided,
        }
    }
    // Equal, or one is a prefix of the other: what the longer one has beyond it lowercases to something non-empty.
    a.len().cmp(&b.len())
}

/// [`str::trim`], looking at bytes while the ends are ASCII (nearly every cell of an export), and at characters
/// only when an end is not.
pub fn trim(text: &str) -> &str {
    let bytes = text.as_bytes();
    let start = bytes.iter().position(|&b| !is_ascii_space(b)).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|&b| !is_ascii_space(b)).map_or(start, |last| last + 1);
    match (bytes.get(start), end.checked_sub(1).and_then(|last| bytes.get(last))) {
        (Some(first), Some(last)) if first.is_ascii() && last.is_ascii() => text.get(start..end).unwrap_or_default(),
        (None, _) => "",
        _ => text.trim(),
    }
}

/// The ASCII characters [`char::is_whitespace`] accepts (which, unlike [`u8::is_ascii_whitespace`], include the
/// vertical tab).
fn is_ascii_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// True when two addresses have the same comparison key ([`address_key`]), without building the keys when both
/// are ASCII.
pub fn same_address_key(a: &str, b: &str) -> bool {
    let (a, b) = (trim(a), trim(b));
    if a.is_ascii() && b.is_ascii() {
        a.eq_ignore_ascii_case(b)
    } else {
        address_key(a) == address_key(b)
    }
}

/// Strips an `smtp:` prefix (any case) from a proxy address. Returns `None` for other address types
/// (`x500:`, `sip:`, …), which never identify a mailbox for matching.
pub fn smtp_proxy_address(raw: &str) -> Option<&str> {
    let raw = trim(raw);
    let colon = raw.bytes().position(|b| b == b':')?;
    let (scheme, rest) = (raw.get(..colon)?, raw.get(colon + 1..)?);
    scheme.eq_ignore_ascii_case("smtp").then(|| trim(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_keys_order_as_their_keys() {
        let addresses = [
            " B@x.example",
            "a@x.example",
            "ab@x.example",
            "A@X.EXAMPLE ",
            "Ä@x.example",
            "ä@X.example",
            "",
            "z",
            "a@x.exampleÄ",
            "a@x.example\u{212A}",
            "a@x.examplek",
            "a@x.examplej",
            "\u{212A}@x.example",
            "k@x.example",
            "\u{130}@x.example",
            "i@x.example",
            "i",
        ];
        for a in addresses {
            for b in addresses {
                assert_eq!(cmp_address_keys(a, b), address_key(a).cmp(&address_key(b)), "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn the_short_form_is_the_first_eight_digits() {
        let id = ObjectId::parse("1B4E28BA-2FA1-11D2-883F-0016D3CCA427").unwrap();
        assert_eq!(id.short(), "1b4e28ba…");
    }

    #[test]
    fn emails_are_trimmed_and_lowercased() {
        assert_eq!(Email::parse("  Ada.Lovelace@Contoso.COM ").unwrap().as_str(), "ada.lovelace@contoso.com");
    }

    #[test]
    fn malformed_emails_are_rejected() {
        for bad in [
            "",
            "   ",
            "no-at.example.com",
            "two@@example.com",
            "@example.com",
            "a@localhost",
            "a b@example.com",
            "a@-x.com",
            "a@x..com",
            "<a@x.com>",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn object_ids_are_canonical() {
        let id = ObjectId::parse("{1B4E28BA-2FA1-11D2-883F-0016D3CCA427}").unwrap();
        assert_eq!(id.as_str(), "1b4e28ba-2fa1-11d2-883f-0016d3cca427");
        assert_eq!(id.to_string(), id.as_str());
        assert_eq!(format!("{id:?}"), "ObjectId(\"1b4e28ba-2fa1-11d2-883f-0016d3cca427\")");
        assert!(ObjectId::parse("1b4e28ba2fa111d2883f0016d3cca427").is_err());
        assert!(ObjectId::parse("'; drop table").is_err());
    }

    #[test]
    fn object_ids_as_numbers() {
        for text in [
            "00000000-0000-0000-0000-000000000001",
            "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
        ] {
            let id = ObjectId::parse(text).unwrap();
            assert_eq!(ObjectId::from_u128(id.to_u128()), id);
            assert_eq!(ObjectId::parse_u128(&text.to_uppercase()).unwrap(), id.to_u128());
        }
        assert_eq!(ObjectId::parse("00000000-0000-0000-0000-000000000010").unwrap().to_u128(), 16);
        let a = ObjectId::parse("0000000a-0000-0000-0000-000000000000").unwrap();
        let b = ObjectId::parse("00000010-0000-0000-0000-000000000000").unwrap();
        assert!(a < b && a.to_u128() < b.to_u128());
        assert!(ObjectId::parse_u128("1b4e28ba2fa111d2883f0016d3cca427").is_err());
        // The canonical form's fast path and uuid's parser agree, also on near misses.
        for raw in [
            "1B4E28BA-2FA1-11D2-883F-0016D3CCA427",
            "{1b4e28ba-2fa1-11d2-883f-0016d3cca427}",
            "1b4e28ba-2fa1-11d2-883f-0016d3cca42g",
            "1b4e28ba-2fa1-11d2-883f+0016d3cca427",
            "1b4e28ba-2fa1-11d2-883f-0016d3cca4277",
            " 1b4e28ba-2fa1-11d2-883f-0016d3cca427 ",
        ] {
            let slow =
                uuid::Uuid::parse_str(raw.trim().trim_start_matches('{').trim_end_matches('}')).map(|u| u.as_u128());
            assert_eq!(ObjectId::parse_u128(raw).ok(), slow.ok(), "{raw:?}");
            if let Ok(id) = ObjectId::parse(raw) {
                let mut text = [0u8; 36];
                uuid::Uuid::from_u128(id.to_u128()).hyphenated().encode_lower(&mut text);
                assert_eq!(id.as_str().as_bytes(), &text);
            }
        }
    }

    #[test]
    fn normalizing_into_a_buffer_is_parsing() {
        let mut key = String::from("left over");
        for raw in [
            "  Ada.Lovelace@Contoso.COM ",
            "\u{212A}elvin@X.com",
            "a b@x.com",
            "",
            "a@x",
            "a\u{7f}@x.com",
            "a\u{b}b@x.com",
            "a\u{0}@x.com",
            "a~!#$%&'*+/=?^_`{|}@x.com",
            "\u{e9}\u{85}@x.com",
        ] {
            let parsed = Email::parse(raw);
            let into = Email::normalize_into(raw, &mut key);
            assert_eq!(
                parsed.as_ref().map(Email::as_str).map_err(Clone::clone),
                into.map(|()| key.as_str()),
                "{raw:?}"
            );
        }
        assert!(same_address_key(" A@x.com", "a@X.COM "));
        assert!(same_address_key("\u{212A}@x.com", "k@x.com"));
        assert!(!same_address_key("a@x.com", "b@x.com"));
    }

    #[test]
    fn fast_trim_is_str_trim() {
        for text in
            ["", " ", "a", " a ", "\u{b}a\u{c}", "\u{a0}a", "a\u{2003}", " \u{a0} a b \u{85}", "\t\r\n", "é ", " é"]
        {
            assert_eq!(trim(text), text.trim(), "{text:?}");
        }
    }

    #[test]
    fn smtp_prefix_any_case() {
        assert_eq!(smtp_proxy_address("SMTP:a@b.com"), Some("a@b.com"));
        assert_eq!(smtp_proxy_address("smtp:a@b.com"), Some("a@b.com"));
        assert_eq!(smtp_proxy_address("x500:/o=x"), None);
        assert_eq!(smtp_proxy_address("a@b.com"), None);
        assert_eq!(smtp_proxy_address(" sMtP: a@b.com "), Some("a@b.com"));
        assert_eq!(smtp_proxy_address("smtp:a:b@c.com"), Some("a:b@c.com"));
    }
}
