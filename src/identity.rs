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
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(InvalidEmail::Empty);
        }
        let lower = trimmed.to_lowercase();
        if lower.chars().any(|c| {
            c.is_whitespace()
                || c.is_control()
                || matches!(c, '"' | '<' | '>' | ',' | ';' | '(' | ')' | '[' | ']' | '\\')
        }) {
            return Err(InvalidEmail::Character);
        }
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
        Ok(Email(lower))
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

/// A string that is not a directory object id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not an object id (a GUID such as 1b4e28ba-2fa1-11d2-883f-0016d3cca427)")]
pub struct InvalidObjectId(pub String);

impl ObjectId {
    /// Parses a GUID in any case, with or without braces.
    pub fn parse(raw: &str) -> Result<Self, InvalidObjectId> {
        let trimmed = raw.trim();
        let uuid = uuid::Uuid::parse_str(trimmed.trim_start_matches('{').trim_end_matches('}'))
            .map_err(|_| InvalidObjectId(trimmed.to_string()))?;
        if trimmed.len() != 36 && trimmed.len() != 38 {
            // Reject the simple (no hyphen) and URN forms: Entra always writes the hyphenated form.
            return Err(InvalidObjectId(trimmed.to_string()));
        }
        let mut text = [0u8; 36];
        uuid.hyphenated().encode_lower(&mut text);
        Ok(ObjectId(text))
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

/// The comparison key of a user principal name or e-mail address: trimmed and lowercased.
///
/// Entra treats UPNs, `mail` and proxy addresses case-insensitively; writeback compares them on this key and
/// keeps the directory's own spelling for display.
pub fn address_key(raw: &str) -> String {
    raw.trim().to_lowercase()
}

/// Strips an `smtp:` prefix (any case) from a proxy address. Returns `None` for other address types
/// (`x500:`, `sip:`, …), which never identify a mailbox for matching.
pub fn smtp_proxy_address(raw: &str) -> Option<&str> {
    let raw = raw.trim();
    let (scheme, rest) = raw.split_once(':')?;
    scheme.eq_ignore_ascii_case("smtp").then(|| rest.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn smtp_prefix_any_case() {
        assert_eq!(smtp_proxy_address("SMTP:a@b.com"), Some("a@b.com"));
        assert_eq!(smtp_proxy_address("smtp:a@b.com"), Some("a@b.com"));
        assert_eq!(smtp_proxy_address("x500:/o=x"), None);
        assert_eq!(smtp_proxy_address("a@b.com"), None);
    }
}
