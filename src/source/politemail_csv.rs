//! The PoliteMail list export (CSV).
//!
//! PoliteMail exports whatever columns the list's grid shows, so only the e-mail column is required; first, last
//! and display names are read when present, and every other column is ignored. Addresses are kept exactly as
//! written: resolution checks and reports them with their line, so that one bad cell does not stop the plan.

use std::path::Path;

use crate::error::{Error, Result};
use crate::plan::{InputRecord, InputRole};
use crate::source::{Contact, ContactList, ContactRef};
use crate::tabular::Table;

/// Header names accepted for the e-mail column (matched ignoring case, spaces and punctuation).
pub const EMAIL_COLUMNS: &[&str] = &["Email", "E-mail", "Email Address", "EmailAddress"];
/// Header names accepted for the first name.
pub const FIRST_NAME_COLUMNS: &[&str] = &["First Name", "FirstName", "Given Name"];
/// Header names accepted for the last name.
pub const LAST_NAME_COLUMNS: &[&str] = &["Last Name", "LastName", "Surname"];
/// Header names accepted for the display name, in order of preference.
pub const DISPLAY_NAME_COLUMNS: &[&str] = &["Display Name", "DisplayName", "Full Name", "Name"];

/// Reads a PoliteMail list export. `email_column` names the e-mail column exactly (ignoring case) when the
/// export's header is not one of [`EMAIL_COLUMNS`].
pub fn read(path: &Path, email_column: Option<&str>) -> Result<ContactList> {
    contacts(Table::open(path)?, email_column)
}

/// Like [`read`], for bytes already in memory; `name` stands for the file in messages and in the plan.
pub fn parse(bytes: &[u8], name: &Path, email_column: Option<&str>) -> Result<ContactList> {
    contacts(Table::from_bytes(bytes, name)?, email_column)
}

/// Like [`read`], handing each contact to `each` in list order instead of keeping them (for lists too large to
/// hold); returns the file's input record. Errors are those of [`read`], and `each` may have seen the rows before
/// the one in error.
pub fn read_each(path: &Path, email_column: Option<&str>, mut each: impl FnMut(Contact)) -> Result<InputRecord> {
    each_contact(Table::open(path)?, email_column, |contact| each(contact.to_owned()))
}

/// Like [`read_each`], lending each contact instead of allocating it.
pub fn read_refs(path: &Path, email_column: Option<&str>, each: impl FnMut(ContactRef<'_>)) -> Result<InputRecord> {
    each_contact(Table::open(path)?, email_column, each)
}

fn contacts(table: Table, email_column: Option<&str>) -> Result<ContactList> {
    let mut contacts = Vec::new();
    let input = each_contact(table, email_column, |contact| contacts.push(contact.to_owned()))?;
    Ok(ContactList { contacts, input })
}

fn each_contact(
    mut table: Table,
    email_column: Option<&str>,
    mut each: impl FnMut(ContactRef<'_>),
) -> Result<InputRecord> {
    let email = match email_column {
        Some(name) => table.exact_column(name).ok_or_else(|| {
            table.error_at(
                table.header_line(),
                format!(
                    "the e-mail column was given as '{}', but the header has no such column; the header has {}",
                    name.trim(),
                    table.header_summary()
                ),
            )
        })?,
        None => table.require_column(EMAIL_COLUMNS, "e-mail").map_err(with_override_hint)?,
    };
    let first = table.column(FIRST_NAME_COLUMNS);
    let last = table.column(LAST_NAME_COLUMNS);
    let display = table.column(DISPLAY_NAME_COLUMNS);

    while let Some(row) = table.next_row()? {
        each(ContactRef {
            email: row.raw(email)?,
            first_name: row.text_opt(first)?,
            last_name: row.text_opt(last)?,
            display_name: row.text_opt(display)?,
            line: row.line(),
        });
    }
    let description = format!("PoliteMail CSV export {}", table.path().display());
    let sha256 = table.finish()?;
    Ok(InputRecord { role: InputRole::Contacts, description, sha256 })
}

fn with_override_hint(err: Error) -> Error {
    match err {
        Error::Input { location, message } if message.starts_with("no e-mail column") => Error::Input {
            location,
            message: format!("{message}. Name the column with --email-column (email_column in the config)"),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str, column: Option<&str>) -> Result<ContactList> {
        parse(text.as_bytes(), Path::new("list.csv"), column)
    }

    #[test]
    fn reads_a_grid_export() {
        let text = "\u{feff}Email,First Name,Last Name,Display Name,Company,Status\r\n\
                    \" Ada.Lovelace@Contoso.example \",Ada,Lovelace,\"Lovelace, Ada\",Contoso,Active\r\n\
                    b@x.example,,, ,,\r\n";
        let list = parse_str(text, None).unwrap();
        assert_eq!(
            list.contacts,
            vec![
                Contact {
                    email: " Ada.Lovelace@Contoso.example ".into(),
                    first_name: Some("Ada".into()),
                    last_name: Some("Lovelace".into()),
                    display_name: Some("Lovelace, Ada".into()),
                    line: 2,
                },
                Contact { email: "b@x.example".into(), line: 3, ..Contact::default() },
            ]
        );
        assert_eq!(list.input.role, InputRole::Contacts);
        assert_eq!(list.input.description, "PoliteMail CSV export list.csv");
        assert_eq!(list.input.sha256, crate::plan::precondition::sha256_hex(text.as_bytes()));
    }

    #[test]
    fn header_spellings() {
        for header in ["EMAIL", "e-mail", "Email Address", "emailaddress", "E-Mail Address"] {
            let list = parse_str(&format!("FirstName;{header};LastName\nA;a@x.example;B\n"), None).unwrap();
            assert_eq!(list.contacts[0].email, "a@x.example", "{header}");
            assert_eq!(list.contacts[0].first_name.as_deref(), Some("A"));
            assert_eq!(list.contacts[0].last_name.as_deref(), Some("B"));
        }
    }

    #[test]
    fn full_name_and_name() {
        let list = parse_str("Name,Email\nAda L,a@x.example\n", None).unwrap();
        assert_eq!(list.contacts[0].display_name.as_deref(), Some("Ada L"));
        let list = parse_str("Name,Full Name,Email\nshort,Ada Lovelace,a@x.example\n", None).unwrap();
        assert_eq!(list.contacts[0].display_name.as_deref(), Some("Ada Lovelace"));
    }

    #[test]
    fn email_column_override() {
        let text = "Work Address,Primary\nwork@x.example,home@x.example\n";
        let list = parse_str(text, Some("primary")).unwrap();
        assert_eq!(list.contacts[0].email, "home@x.example");
        let err = parse_str(text, Some("Email")).unwrap_err().to_string();
        assert_eq!(
            err,
            "list.csv:1: the e-mail column was given as 'Email', but the header has no such column; the header has \
             'Work Address', 'Primary'"
        );
    }

    #[test]
    fn missing_email_column() {
        let err = parse_str("Name,Company\nA,B\n", None).unwrap_err();
        assert_eq!(err.exit_code(), crate::error::exit::INPUT);
        let msg = err.to_string();
        assert!(msg.starts_with("list.csv:1: no e-mail column: expected one of 'Email', 'E-mail'"), "{msg}");
        assert!(msg.contains("the header has 'Name', 'Company'"), "{msg}");
        assert!(msg.ends_with("Name the column with --email-column (email_column in the config)"), "{msg}");
    }

    #[test]
    fn invalid_addresses_are_kept_for_resolution() {
        let list = parse_str("Email\nnot an address\n\"\"\n", None).unwrap();
        assert_eq!(list.contacts.len(), 1, "the blank row is skipped");
        assert_eq!(list.contacts[0].email, "not an address");
    }

    #[test]
    fn empty_email_with_a_name_is_kept() {
        let list = parse_str("Email,Name\n,Someone\n", None).unwrap();
        assert_eq!(list.contacts[0].email, "");
        assert_eq!(list.contacts[0].line, 2);
    }

    #[test]
    fn ragged_row_is_an_error() {
        let err = parse_str("Email,Name\na@x.example,Smith, John\n", None).unwrap_err().to_string();
        assert!(err.starts_with("list.csv:2: this row has 3 cells but the header (line 1) has 2"), "{err}");
    }
}
