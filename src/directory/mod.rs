//! The current state of the directory: users, and the members of a group.
//!
//! Two readers produce these values: the Entra admin center CSV exports ([`entra_csv`]) and Microsoft Graph
//! ([`graph`]). Everything downstream (resolution, diff, plan) sees only these types, so both paths give the
//! same plan.

pub mod entra_csv;
pub mod graph;
pub mod user_table;

use serde::{Deserialize, Serialize};

use crate::identity::ObjectId;

/// Whether a user belongs to the tenant or was invited from outside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UserType {
    /// A member of the home tenant.
    Member,
    /// An invited (B2B) guest.
    Guest,
    /// The directory did not say.
    Unknown,
}

/// A user account in Entra ID, as far as writeback needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryUser {
    /// The user's object id.
    pub id: ObjectId,
    /// userPrincipalName, as the directory spells it.
    pub upn: String,
    /// displayName, when known.
    pub display_name: Option<String>,
    /// The primary SMTP address (`mail`), when set.
    pub mail: Option<String>,
    /// Member or guest.
    pub user_type: UserType,
    /// `accountEnabled`, when known.
    pub account_enabled: Option<bool>,
    /// proxyAddresses, as written (`SMTP:a@b.com`, `smtp:alias@b.com`, `x500:…`).
    pub proxy_addresses: Vec<String>,
}

impl DirectoryUser {
    /// True for B2B guests: `userType` Guest, or a UPN carrying `#EXT#`.
    pub fn is_guest(&self) -> bool {
        self.user_type == UserType::Guest || self.upn.to_ascii_uppercase().contains("#EXT#")
    }

    /// True when the account is known to be disabled.
    pub fn is_disabled(&self) -> bool {
        self.account_enabled == Some(false)
    }
}

/// The kind of a directory object that is a member of a group.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberKind {
    /// A user: the only kind writeback adds or removes.
    User,
    /// A nested group.
    Group,
    /// A device.
    Device,
    /// A service principal (an application).
    ServicePrincipal,
    /// An organizational contact.
    OrgContact,
    /// Anything else, with the type name the source gave.
    Other(String),
}

impl MemberKind {
    /// Reads a member type as the Entra export or Graph writes it: `User`, `#microsoft.graph.user`,
    /// `Service Principal`, `servicePrincipal`, `orgContact`, …
    pub fn from_type_name(raw: &str) -> MemberKind {
        let name = raw.trim().trim_start_matches("#microsoft.graph.");
        let key: String = name.chars().filter(|c| !c.is_whitespace() && *c != '_').collect::<String>().to_lowercase();
        match key.as_str() {
            "user" => MemberKind::User,
            "group" => MemberKind::Group,
            "device" => MemberKind::Device,
            "serviceprincipal" | "application" => MemberKind::ServicePrincipal,
            "orgcontact" | "contact" | "organizationalcontact" => MemberKind::OrgContact,
            _ => MemberKind::Other(name.to_string()),
        }
    }

    /// A short word for tables and messages.
    pub fn label(&self) -> &str {
        match self {
            MemberKind::User => "user",
            MemberKind::Group => "group",
            MemberKind::Device => "device",
            MemberKind::ServicePrincipal => "service principal",
            MemberKind::OrgContact => "contact",
            MemberKind::Other(name) => name,
        }
    }
}

/// One direct member of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    /// The member's object id.
    pub id: ObjectId,
    /// What kind of object it is.
    pub kind: MemberKind,
    /// userPrincipalName, for users.
    pub upn: Option<String>,
    /// displayName, when known.
    pub display_name: Option<String>,
    /// mail, when known.
    pub mail: Option<String>,
    /// Where the member was read from (a CSV line number), when it came from a file.
    pub source_line: Option<u64>,
}

impl GroupMember {
    /// The member, borrowed.
    pub fn as_ref(&self) -> MemberRef<'_> {
        MemberRef {
            id: self.id.clone(),
            kind: &self.kind,
            upn: self.upn.as_deref(),
            display_name: self.display_name.as_deref(),
            mail: self.mail.as_deref(),
            source_line: self.source_line,
        }
    }
}

/// One direct member of a group, borrowed: what readers hand out without allocating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRef<'a> {
    /// The member's object id.
    pub id: ObjectId,
    /// What kind of object it is.
    pub kind: &'a MemberKind,
    /// userPrincipalName, for users.
    pub upn: Option<&'a str>,
    /// displayName, when known.
    pub display_name: Option<&'a str>,
    /// mail, when known.
    pub mail: Option<&'a str>,
    /// Where the member was read from (a CSV line number), when it came from a file.
    pub source_line: Option<u64>,
}

impl MemberRef<'_> {
    /// The member, owned.
    pub fn to_owned(&self) -> GroupMember {
        GroupMember {
            id: self.id.clone(),
            kind: self.kind.clone(),
            upn: self.upn.map(str::to_string),
            display_name: self.display_name.map(str::to_string),
            mail: self.mail.map(str::to_string),
            source_line: self.source_line,
        }
    }
}

/// The group a mapping writes to, as far as planning needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    /// The group's object id.
    pub id: ObjectId,
    /// displayName, when known (offline, it comes from the config or `--group-name`).
    pub display_name: Option<String>,
}
