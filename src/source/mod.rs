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
        self.as_ref().name()
    }

    /// The contact, borrowed.
    pub fn as_ref(&self) -> ContactRef<'_> {
        ContactRef {
            email: &self.email,
            first_name: self.first_name.as_deref(),
            last_name: self.last_name.as_deref(),
            display_name: self.display_name.as_deref(),
            line: self.line,
        }
    }
}

/// One row of a PoliteMail list, borrowed: what readers hand out without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ContactRef<'a> {
    /// The e-mail address exactly as the source wrote it.
    pub email: &'a str,
    /// First name, when the source has one.
    pub first_name: Option<&'a str>,
    /// Last name, when the source has one.
    pub last_name: Option<&'a str>,
    /// Display name, when the source has one.
    pub display_name: Option<&'a str>,
    /// Where the contact came from (see [`Contact::line`]).
    pub line: u64,
}

impl ContactRef<'_> {
    /// The best human name for this contact: the display name, else first and last name.
    pub fn name(&self) -> Option<String> {
        let mut name = String::new();
        self.write_name(&mut name).then_some(name)
    }

    /// Appends [`ContactRef::name`] to `out`; false (and nothing appended) when the contact has no name.
    pub fn write_name(&self, out: &mut String) -> bool {
        if let Some(name) = self.display_name.map(str::trim).filter(|n| !n.is_empty()) {
            out.push_str(name);
            return true;
        }
        let mut wrote = false;
        for part in [self.first_name, self.last_name].into_iter().flatten().map(str::trim).filter(|p| !p.is_empty()) {
            if wrote {
                out.push(' ');
            }
            out.push_str(part);
            wrote = true;
        }
        wrote
    }

    /// The contact, owned.
    pub fn to_owned(&self) -> Contact {
        Contact {
            email: self.email.to_string(),
            first_name: self.first_name.map(str::to_string),
            last_name: self.last_name.map(str::to_string),
            display_name: self.display_name.map(str::to_string),
            line: self.line,
        }
    }
}

/// Contacts held compactly, for lists too large for one [`Contact`] (five allocations) each: per contact its line,
/// its address as written and its name ([`ContactRef::name`]), all text in one buffer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContactBuffer {
    text: String,
    /// (line, end of the address, end of the name or [`NO_NAME`]) per contact; each starts where the last ended.
    rows: Vec<(u64, usize, usize)>,
}

const NO_NAME: usize = usize::MAX;

impl ContactBuffer {
    /// An empty buffer.
    pub fn new() -> ContactBuffer {
        ContactBuffer::default()
    }

    /// Keeps one contact.
    pub fn push(&mut self, contact: ContactRef<'_>) {
        self.text.push_str(contact.email);
        let email_end = self.text.len();
        let name_end = if contact.write_name(&mut self.text) { self.text.len() } else { NO_NAME };
        self.rows.push((contact.line, email_end, name_end));
    }

    /// Forgets every contact after the first `len`.
    pub fn truncate(&mut self, len: usize) {
        self.rows.truncate(len);
        let end = self
            .rows
            .last()
            .map_or(0, |&(_, email_end, name_end)| if name_end == NO_NAME { email_end } else { name_end });
        self.text.truncate(end);
    }

    /// How many contacts the buffer holds.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when the buffer holds no contact.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The contacts, in the order they were kept. A contact's name comes back as its display name.
    pub fn iter(&self) -> impl Iterator<Item = ContactRef<'_>> + '_ {
        let mut start = 0;
        self.rows.iter().map(move |&(line, email_end, name_end)| {
            let email = self.text.get(start..email_end).unwrap_or_default();
            let display_name = (name_end != NO_NAME).then(|| self.text.get(email_end..name_end).unwrap_or_default());
            start = if name_end == NO_NAME { email_end } else { name_end };
            ContactRef { email, first_name: None, last_name: None, display_name, line }
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_buffers() {
        let contacts = [
            Contact {
                email: " a@x.example".into(),
                display_name: Some("  Ada L ".into()),
                line: 2,
                ..Contact::default()
            },
            Contact {
                email: "b@x.example".into(),
                first_name: Some(" Bob".into()),
                last_name: Some("".into()),
                line: 3,
                ..Contact::default()
            },
            Contact {
                email: "".into(),
                first_name: Some("Cy".into()),
                last_name: Some("Young ".into()),
                display_name: Some(" ".into()),
                line: 5,
            },
            Contact { email: "d@x.example".into(), line: 6, ..Contact::default() },
        ];
        let names: Vec<Option<String>> = contacts.iter().map(Contact::name).collect();
        assert_eq!(names, [Some("Ada L".into()), Some("Bob".into()), Some("Cy Young".into()), None]);
        let mut buffer = ContactBuffer::new();
        contacts.iter().for_each(|c| buffer.push(c.as_ref()));
        assert_eq!(buffer.len(), 4);
        let back: Vec<(String, Option<String>, u64)> =
            buffer.iter().map(|c| (c.email.to_string(), c.name(), c.line)).collect();
        let expected: Vec<(String, Option<String>, u64)> =
            contacts.iter().map(|c| (c.email.clone(), c.name(), c.line)).collect();
        assert_eq!(back, expected);
    }
}
