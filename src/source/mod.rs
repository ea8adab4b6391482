//! The desired members: a PoliteMail list, read from its CSV export ([`politemail_csv`]) or its OData API
//! ([`politemail_api`]).

pub mod politemail_api;
pub mod politemail_csv;

/// One row of a PoliteMail list: the address as written, plus the names the reviewer will want to see.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Contact {
    /// The e-mail address exactly as the source wrote it (normalization happens during resolution, so that
    /// malformed addresses can be reported as written).
    pub email: String,
    /// First name, when the source has one.
    pub first_name: Option<String>,
    /// Last name, when the source has one.
    pub last_name: Option<String>,
    /// Display name, when the source has one.
    pub display_name: Option<String>,
    /// Where the contact came from: the CSV line number (the header is line 1), or the position in the API
    /// answer (1-based) for live reads.
    pub line: u64,
}

impl Contact {
    /// The best human name for this contact: the display name, else first and last name.
    pub fn name(&self) -> Option<String> {
        if let Some(name) = self.display_name.as_ref().filter(|n| !n.trim().is_empty()) {
            return Some(name.trim().to_string());
        }
        let joined = [self.first_name.as_deref(), self.last_name.as_deref()]
            .into_iter()
            .flatten()
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        (!joined.is_empty()).then_some(joined)
    }
}

/// A list of contacts together with a description of where it came from, for the plan's record of inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactList {
    /// The contacts, in source order.
    pub contacts: Vec<Contact>,
    /// The input record (description and SHA-256) that goes into the plan.
    pub input: crate::plan::InputRecord,
}
