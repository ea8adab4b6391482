//! The Entra admin center's "Download members" and "Download users" CSV exports.
//!
//! The portal has spelled these headers several ways over the years (`objectId`, `Object Id`, `id`;
//! `userPrincipalName`, `User principal name`), and PowerShell or Graph exports use the attribute names: every
//! spelling is accepted, in any case and spacing. Object ids must be GUIDs; a bad one stops the read with its line.

use std::path::Path;

use crate::directory::user_table::{UserFields, UserTable};
use crate::directory::{DirectoryUser, GroupMember, MemberKind, MemberRef, UserType};
use crate::error::{Error, Result};
use crate::identity::{trim, ObjectId};
use crate::plan::{InputRecord, InputRole};
use crate::tabular::{Row, Table};

/// Header names accepted for the object id.
pub const ID_COLUMNS: &[&str] = &["id", "objectId", "Object ID", "Object Id"];
/// Header names accepted for the user principal name.
pub const UPN_COLUMNS: &[&str] = &["userPrincipalName", "User principal name", "UPN"];
/// Header names accepted for the display name.
pub const DISPLAY_NAME_COLUMNS: &[&str] = &["displayName", "Display name", "Name"];
/// Header names accepted for the primary SMTP address.
pub const MAIL_COLUMNS: &[&str] = &["mail", "Email", "E-mail", "PrimarySmtpAddress"];
/// Header names accepted for a member's type.
pub const MEMBER_TYPE_COLUMNS: &[&str] = &["Member type", "memberType", "objectType", "Object type", "@odata.type"];
/// Header names accepted for the user type (Member or Guest).
pub const USER_TYPE_COLUMNS: &[&str] = &["userType", "User type"];
/// Header names accepted for whether the account is enabled.
pub const ACCOUNT_ENABLED_COLUMNS: &[&str] = &["accountEnabled", "Account enabled"];
/// Header names accepted for the proxy addresses.
pub const PROXY_ADDRESSES_COLUMNS: &[&str] = &["proxyAddresses", "Proxy addresses"];

/// Reads a group's "Download members" export.
///
/// A row is a user when its member type says so; without a member-type column (or with an empty cell), a row is a
/// user exactly when its user principal name is not empty.
pub fn read_members(path: &Path) -> Result<(Vec<GroupMember>, InputRecord)> {
    members(Table::open(path)?)
}

/// Like [`read_members`], for bytes already in memory; `name` stands for the file in messages and in the plan.
pub fn parse_members(bytes: &[u8], name: &Path) -> Result<(Vec<GroupMember>, InputRecord)> {
    members(Table::from_bytes(bytes, name)?)
}

/// Reads a "Download users" export (or a PowerShell/Graph export with the same attribute names).
pub fn read_users(path: &Path) -> Result<(Vec<DirectoryUser>, InputRecord)> {
    users(Table::open(path)?)
}

/// Like [`read_users`], for bytes already in memory; `name` stands for the file in messages and in the plan.
pub fn parse_users(bytes: &[u8], name: &Path) -> Result<(Vec<DirectoryUser>, InputRecord)> {
    users(Table::from_bytes(bytes, name)?)
}

/// Like [`read_users`], into a compact [`UserTable`] (for directories of a million users). Errors are those of
/// [`read_users`].
pub fn read_user_table(path: &Path) -> Result<(UserTable, InputRecord)> {
    let table = Table::open(path)?;
    // About a third of an export's bytes are text the table keeps.
    let size = std::fs::metadata(path).map(|m| m.len() as usize).unwrap_or(0);
    let mut users = UserTable::with_capacity(size / 200, size / 3);
    let path = table.path().to_path_buf();
    let input = each_user(table, |user| users.push(user).map_err(|e| Error::input(&path, e.to_string())))?;
    users.shrink_to_fit();
    Ok((users, input))
}

/// Like [`read_members`], handing each member to `each` in file order instead of keeping them (for groups too
/// large to hold); returns the file's input record. Errors are those of [`read_members`], and `each` may have seen
/// the rows before the one in error.
pub fn read_members_each(path: &Path, mut each: impl FnMut(GroupMember)) -> Result<InputRecord> {
    each_member(Table::open(path)?, |member| each(member.to_owned()))
}

/// Like [`read_members_each`], lending each member instead of allocating it.
pub fn read_member_refs(path: &Path, each: impl FnMut(MemberRef<'_>)) -> Result<InputRecord> {
    each_member(Table::open(path)?, each)
}

fn members(table: Table) -> Result<(Vec<GroupMember>, InputRecord)> {
    let mut members = Vec::new();
    let input = each_member(table, |member| members.push(member.to_owned()))?;
    Ok((members, input))
}

fn each_member(mut table: Table, mut each: impl FnMut(MemberRef<'_>)) -> Result<InputRecord> {
    let id = table.require_column(ID_COLUMNS, "object id")?;
    let upn = table.optional_column(UPN_COLUMNS, "user principal name")?;
    let kind = table.optional_column(MEMBER_TYPE_COLUMNS, "member type")?;
    let display = table.column(DISPLAY_NAME_COLUMNS);
    let mail = table.column(MAIL_COLUMNS);
    if upn.is_none() && kind.is_none() {
        return Err(table.error_at(
            table.header_line(),
            format!(
                "cannot tell users from other members: the file needs a 'User principal name' or a 'Member type' \
                 column; the header has {}. Download the members again from the group's Members page",
                table.header_summary()
            ),
        ));
    }

    // The type column repeats a handful of values; parse each distinct spelling once.
    let mut last_type: Option<(String, MemberKind)> = None;
    let user = MemberKind::User;
    let unknown = MemberKind::Other("unknown".to_string());
    while let Some(row) = table.next_row()? {
        let member_upn = row.text_opt(upn)?;
        let member_kind = match row.text_opt(kind)? {
            Some(name) => {
                if last_type.as_ref().is_none_or(|(seen, _)| seen != name) {
                    last_type = Some((name.to_string(), MemberKind::from_type_name(name)));
                }
                last_type.as_ref().map_or(&unknown, |(_, parsed)| parsed)
            }
            None if member_upn.is_some() => &user,
            None => &unknown,
        };
        each(MemberRef {
            id: object_id(&row, id)?,
            kind: member_kind,
            upn: member_upn,
            display_name: row.text_opt(display)?,
            mail: row.text_opt(mail)?,
            source_line: Some(row.line()),
        });
    }
    record(table, InputRole::Members, "Entra members export")
}

fn users(table: Table) -> Result<(Vec<DirectoryUser>, InputRecord)> {
    let mut out = Vec::new();
    let input = each_user(table, |user| {
        let mut proxy_addresses: Vec<String> = user.proxy_addresses.map(str::to_string).collect();
        // A user has a few addresses, kept for the whole run: no spare capacity (a million users export).
        proxy_addresses.shrink_to_fit();
        out.push(DirectoryUser {
            id: ObjectId::from_u128(user.id),
            upn: user.upn.to_string(),
            display_name: user.display_name.map(str::to_string),
            mail: user.mail.map(str::to_string),
            user_type: user.user_type,
            account_enabled: user.account_enabled,
            proxy_addresses,
        });
        Ok(())
    })?;
    Ok((out, input))
}

/// The proxy addresses of one cell, as [`split_proxy_addresses`] splits them.
type ProxyValues<'a> = std::iter::Flatten<std::option::IntoIter<ProxySplit<'a>>>;

fn each_user(
    mut table: Table,
    mut each: impl for<'r> FnMut(UserFields<'r, ProxyValues<'r>>) -> Result<()>,
) -> Result<InputRecord> {
    let id = table.require_column(ID_COLUMNS, "object id")?;
    let upn = table.require_column(UPN_COLUMNS, "user principal name")?;
    let display = table.column(DISPLAY_NAME_COLUMNS);
    let mail = table.optional_column(MAIL_COLUMNS, "mail")?;
    let user_type = table.column(USER_TYPE_COLUMNS);
    let enabled = table.column(ACCOUNT_ENABLED_COLUMNS);
    let proxies = table.optional_column(PROXY_ADDRESSES_COLUMNS, "proxy addresses")?;

    while let Some(row) = table.next_row()? {
        let user_upn = row.text(upn)?.ok_or_else(|| {
            row.error(upn, "the user principal name is empty; every user has one. Download the users again")
        })?;
        let user_type = match row.text_opt(user_type)? {
            Some(t) if t.eq_ignore_ascii_case("member") => UserType::Member,
            Some(t) if t.eq_ignore_ascii_case("guest") => UserType::Guest,
            _ => UserType::Unknown,
        };
        let account_enabled = match (enabled, row.text_opt(enabled)?) {
            (Some(col), Some(cell)) => Some(parse_bool(cell).ok_or_else(|| {
                row.error(col, format!("'{cell}' is not a yes/no value; expected true, false, yes or no"))
            })?),
            _ => None,
        };
        let proxy_addresses = match (proxies, row.text_opt(proxies)?) {
            (Some(col), Some(cell)) => Some(proxy_values(cell).map_err(|msg| row.error(col, msg))?),
            _ => None,
        };
        each(UserFields {
            id: object_id_u128(&row, id)?,
            upn: user_upn,
            display_name: row.text_opt(display)?,
            mail: row.text_opt(mail)?,
            user_type,
            account_enabled,
            proxy_addresses: proxy_addresses.into_iter().flatten(),
        })?;
    }
    record(table, InputRole::Users, "Entra users export")
}

fn object_id_u128(row: &Row<'_>, column: usize) -> Result<u128> {
    match row.text(column)? {
        None => Err(row.error(column, "the object id is empty; every row needs one")),
        Some(raw) => ObjectId::parse_u128(raw).map_err(|e| row.error(column, e.to_string())),
    }
}

fn object_id(row: &Row<'_>, column: usize) -> Result<ObjectId> {
    match row.text(column)? {
        None => Err(row.error(column, "the object id is empty; every row needs one")),
        Some(raw) => ObjectId::parse(raw).map_err(|e| row.error(column, e.to_string())),
    }
}

fn record(table: Table, role: InputRole, what: &str) -> Result<InputRecord> {
    let description = format!("{what} {}", table.path().display());
    Ok(InputRecord { role, description, sha256: table.finish()? })
}

/// `true`/`false`, `yes`/`no`, `1`/`0`, in any case.
fn parse_bool(cell: &str) -> Option<bool> {
    match cell.to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" => Some(true),
        "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

/// Splits a proxyAddresses cell: values separated by `;`, `|` or `,`, optionally wrapped in `{…}` or `[…]` with
/// quoted items (as PowerShell and JSON write arrays).
#[cfg(test)]
fn split_proxy_addresses(cell: &str) -> std::result::Result<Vec<String>, String> {
    Ok(proxy_values(cell)?.map(str::to_string).collect())
}

/// The values of a proxyAddresses cell (see [`split_proxy_addresses`]), without allocating.
fn proxy_values(cell: &str) -> std::result::Result<ProxySplit<'_>, String> {
    if cell.starts_with("System.") || cell.starts_with("Microsoft.") {
        return Err(format!(
            "'{cell}' is a PowerShell type name, not the addresses; export with \
             @{{n='proxyAddresses';e={{$_.proxyAddresses -join ';'}}}}"
        ));
    }
    let inner = cell.trim().trim_start_matches(['{', '[']).trim_end_matches(['}', ']']);
    Ok(ProxySplit { rest: Some(inner) })
}

/// `text.trim_matches(['"', '\''])`: quotes are ASCII, so bytes will do.
fn strip_quotes(text: &str) -> &str {
    let quote = |b: &u8| *b == b'"' || *b == b'\'';
    let bytes = text.as_bytes();
    let start = bytes.iter().position(|b| !quote(b)).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !quote(b)).map_or(start, |last| last + 1);
    text.get(start..end).unwrap_or_default()
}

/// The iterator of [`proxy_values`].
#[derive(Debug, Clone)]
struct ProxySplit<'a> {
    rest: Option<&'a str>,
}

impl<'a> Iterator for ProxySplit<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        loop {
            let rest = self.rest?;
            // The separators are ASCII, so a byte search finds exactly what a char search would.
            let (value, after) = match rest.bytes().position(|b| matches!(b, b';' | b'|' | b',')) {
                Some(at) => (rest.get(..at).unwrap_or_default(), rest.get(at + 1..)),
                None => (rest, None),
            };
            self.rest = after;
            // value.trim().trim_matches(['"', '\'']).trim(), byte by byte.
            let value = trim(strip_quotes(trim(value)));
            if !value.is_empty() {
                return Some(value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
    const B: &str = "6f9619ff-8b86-d011-b42d-00c04fc964ff";
    const C: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";

    fn members_of(text: &str) -> Result<Vec<GroupMember>> {
        parse_members(text.as_bytes(), Path::new("m.csv")).map(|(m, _)| m)
    }

    fn users_of(text: &str) -> Result<Vec<DirectoryUser>> {
        parse_users(text.as_bytes(), Path::new("u.csv")).map(|(u, _)| u)
    }

    #[test]
    fn portal_members_export() {
        let text = format!(
            "\u{feff}Object ID,User principal name,Display name,Member type\r\n\
             {},Ada@Contoso.example,Ada Lovelace,User\r\n{B},,Comms Team,Group\r\n{C},,Build Agent,Service Principal\r\n",
            A.to_uppercase()
        );
        let (members, input) = parse_members(text.as_bytes(), Path::new("m.csv")).unwrap();
        assert_eq!(members.len(), 3);
        assert_eq!(members[0].id.as_str(), A);
        assert_eq!(members[0].kind, MemberKind::User);
        assert_eq!(members[0].upn.as_deref(), Some("Ada@Contoso.example"));
        assert_eq!(members[0].display_name.as_deref(), Some("Ada Lovelace"));
        assert_eq!(members[0].source_line, Some(2));
        assert_eq!(members[1].kind, MemberKind::Group);
        assert_eq!(members[2].kind, MemberKind::ServicePrincipal);
        assert_eq!(input.role, InputRole::Members);
        assert_eq!(input.description, "Entra members export m.csv");
    }

    #[test]
    fn graph_style_members_export() {
        let text = format!(
            "id;userPrincipalName;displayName;@odata.type\n{A};a@x.example;A;#microsoft.graph.user\n\
             {B};;Laptop;#microsoft.graph.device\n"
        );
        let members = members_of(&text).unwrap();
        assert_eq!(members[0].kind, MemberKind::User);
        assert_eq!(members[1].kind, MemberKind::Device);
    }

    #[test]
    fn without_a_type_column_an_empty_upn_is_not_a_user() {
        let members = members_of(&format!("objectId,UPN\n{A},a@x.example\n{B},\n")).unwrap();
        assert_eq!(members[0].kind, MemberKind::User);
        assert_eq!(members[1].kind, MemberKind::Other("unknown".into()));
    }

    #[test]
    fn members_need_upn_or_type() {
        let err = members_of(&format!("id,displayName\n{A},A\n")).unwrap_err().to_string();
        assert!(err.starts_with("m.csv:1: cannot tell users from other members"), "{err}");
    }

    #[test]
    fn bad_object_id_names_line_and_column() {
        let err = members_of(&format!("Object Id,User principal name\n{A},a@x.example\nnot-a-guid,b@x.example\n"))
            .unwrap_err();
        assert_eq!(err.exit_code(), crate::error::exit::INPUT);
        assert_eq!(
            err.to_string(),
            "m.csv:3: column 'Object Id': 'not-a-guid' is not an object id (a GUID such as \
             1b4e28ba-2fa1-11d2-883f-0016d3cca427)"
        );
        let err = members_of(&format!("id,upn\n{A},a@x.example\n,b@x.example\n")).unwrap_err().to_string();
        assert_eq!(err, "m.csv:3: column 'id': the object id is empty; every row needs one");
    }

    #[test]
    fn missing_id_column() {
        let err = members_of("userPrincipalName\na@x.example\n").unwrap_err().to_string();
        assert!(err.starts_with("m.csv:1: no object id column: expected one of 'id', 'objectId'"), "{err}");
    }

    #[test]
    fn users_export_with_attribute_names() {
        let text = format!(
            "id,userPrincipalName,displayName,surname,mail,givenName,userType,accountEnabled,proxyAddresses\n\
             {A},ada@contoso.example,Ada,Lovelace,Ada.Lovelace@contoso.example,Ada,Member,true,\
             SMTP:Ada.Lovelace@contoso.example;smtp:ada@contoso.example\n\
             {B},bob_fabrikam.example#EXT#@contoso.example,Bob,,bob@fabrikam.example,,Guest,False,\n\
             {C},carol@contoso.example,,,,,,,\"smtp:c@contoso.example|SMTP:carol@contoso.example\"\n"
        );
        let (users, input) = parse_users(text.as_bytes(), Path::new("u.csv")).unwrap();
        assert_eq!(input.role, InputRole::Users);
        assert_eq!(input.description, "Entra users export u.csv");
        assert_eq!(users[0].id.as_str(), A);
        assert_eq!(users[0].mail.as_deref(), Some("Ada.Lovelace@contoso.example"));
        assert_eq!(users[0].user_type, UserType::Member);
        assert_eq!(users[0].account_enabled, Some(true));
        assert_eq!(users[0].proxy_addresses, ["SMTP:Ada.Lovelace@contoso.example", "smtp:ada@contoso.example"]);
        assert!(users[1].is_guest());
        assert!(users[1].is_disabled());
        assert!(users[1].proxy_addresses.is_empty());
        assert_eq!(users[2].user_type, UserType::Unknown);
        assert_eq!(users[2].account_enabled, None);
        assert_eq!(users[2].display_name, None);
        assert_eq!(users[2].proxy_addresses, ["smtp:c@contoso.example", "SMTP:carol@contoso.example"]);
    }

    #[test]
    fn users_export_with_portal_names() {
        let text = format!(
            "User principal name;Display name;Object Id;User type;Account enabled;Mail\n\
             ada@contoso.example;Ada;{A};member;Yes;\nbob@contoso.example;Bob;{B};Member;No;bob@contoso.example\n"
        );
        let users = users_of(&text).unwrap();
        assert_eq!(users[0].account_enabled, Some(true));
        assert_eq!(users[0].mail, None);
        assert_eq!(users[1].account_enabled, Some(false));
        assert_eq!(users[1].id.as_str(), B);
    }

    #[test]
    fn bad_account_enabled() {
        let err = users_of(&format!("id,upn,accountEnabled\n{A},a@x.example,maybe\n")).unwrap_err().to_string();
        assert_eq!(
            err,
            "u.csv:2: column 'accountEnabled': 'maybe' is not a yes/no value; expected true, false, yes or no"
        );
    }

    #[test]
    fn empty_upn_is_an_error_for_users() {
        let err = users_of(&format!("id,upn\n{A},\n")).unwrap_err().to_string();
        assert!(err.starts_with("u.csv:2: column 'upn': the user principal name is empty"), "{err}");
    }

    #[test]
    fn proxy_values_are_split_as_before() {
        let cell = " \"SMTP:a@x.example\" ; ' smtp:b@x.example'|\"\" , \" \"x\" \",\u{a0}smtp:c@x.example";
        let old: Vec<&str> = cell
            .split([';', '|', ','])
            .map(|v| v.trim().trim_matches(['"', '\'']).trim())
            .filter(|v| !v.is_empty())
            .collect();
        assert_eq!(split_proxy_addresses(cell).unwrap(), old);
    }

    #[test]
    fn proxy_address_shapes() {
        assert_eq!(
            split_proxy_addresses("{SMTP:a@x.example, smtp:b@x.example}").unwrap(),
            ["SMTP:a@x.example", "smtp:b@x.example"]
        );
        assert_eq!(
            split_proxy_addresses("[\"SMTP:a@x.example\",\"x500:/o=X\"]").unwrap(),
            ["SMTP:a@x.example", "x500:/o=X"]
        );
        assert!(split_proxy_addresses("System.String[]").unwrap_err().contains("-join ';'"));
    }
}
