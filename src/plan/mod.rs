//! The plan: a self-contained changeset of group member adds and removes, and everything a reviewer needs to
//! judge it.
//!
//! A plan is written once, in JSON ([`json`]) or CSV ([`csv`]), and then signed over its exact bytes. Readers
//! never re-serialize a plan to check it. The two encodings carry the same information: decoding either gives
//! the same [`Plan`] value.

pub mod csv;
pub mod json;
pub mod precondition;
pub mod version;

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::identity::ObjectId;

pub use precondition::Precondition;

/// The `format` marker every plan carries.
pub const FORMAT_NAME: &str = "writeback-plan";
/// The format version this build writes: the newest of [`version::KNOWN`].
pub const FORMAT_VERSION: &str = "1.1";

/// A plan document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// `MAJOR.MINOR`; see [`FORMAT_VERSION`].
    pub format_version: String,
    /// A random id, unique to this plan. `apply` records it so that a plan is never applied twice.
    pub plan_id: Uuid,
    /// When the plan was made (UTC, whole seconds).
    #[serde(with = "timestamp")]
    pub created_at: DateTime<Utc>,
    /// After this moment `apply` refuses the plan.
    #[serde(with = "timestamp")]
    pub expires_at: DateTime<Utc>,
    /// The principal that signs the plan, as it appears in the allowed_signers file.
    pub signer: String,
    /// The writeback version that made the plan, e.g. `writeback 0.1.0`.
    pub tool_version: String,
    /// The Entra tenant id, when the plan was made against Graph.
    pub tenant_id: Option<String>,
    /// Who read Graph for the plan (the planner's Entra sign-in), when the plan was made against Graph. Since
    /// format 1.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entra_actor: Option<crate::identity::EntraActor>,
    /// One entry per target group.
    pub groups: Vec<GroupPlan>,
}

/// The changes for one group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupPlan {
    /// The group's object id.
    pub group_id: ObjectId,
    /// The group's display name, when known.
    pub display_name: Option<String>,
    /// What the direction options were when the plan was made.
    pub options: PlanOptions,
    /// Where the desired and current membership came from.
    pub inputs: Vec<InputRecord>,
    /// The user membership the plan was computed against.
    pub precondition: Precondition,
    /// How many entries of each kind the plan holds.
    pub counts: Counts,
    /// The adds and removes, adds first, each sorted by UPN.
    pub changes: Vec<Change>,
    /// Entries that will not be acted on, and why.
    pub not_acted_on: Vec<Skipped>,
}

/// The options that shaped a group's changes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanOptions {
    /// Only adds were planned (`--add-only`).
    pub add_only: bool,
    /// Only removes were planned (`--remove-only`).
    pub remove_only: bool,
}

/// What one input was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputRecord {
    /// What the input supplied.
    pub role: InputRole,
    /// A human description: the file name or API endpoint and list.
    pub description: String,
    /// SHA-256 (hex) of the file's bytes, or of the canonical form of what an API returned.
    pub sha256: String,
}

/// What an input supplied to the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputRole {
    /// The desired members (a PoliteMail list).
    Contacts,
    /// The group's current members.
    Members,
    /// The directory's users, used to resolve contacts.
    Users,
    /// The list of users that are never removed (`--keep`).
    Keep,
}

impl InputRole {
    /// The name used in the JSON and CSV encodings.
    pub fn as_str(self) -> &'static str {
        match self {
            InputRole::Contacts => "contacts",
            InputRole::Members => "members",
            InputRole::Users => "users",
            InputRole::Keep => "keep",
        }
    }

    /// Parses [`InputRole::as_str`].
    pub fn parse(raw: &str) -> Option<Self> {
        [InputRole::Contacts, InputRole::Members, InputRole::Users, InputRole::Keep]
            .into_iter()
            .find(|r| r.as_str() == raw)
    }
}

/// Add or remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Make the user a member.
    Add,
    /// Take the user out of the group.
    Remove,
}

impl Action {
    /// `add` or `remove`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Add => "add",
            Action::Remove => "remove",
        }
    }

    /// Parses [`Action::as_str`].
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "add" => Some(Action::Add),
            "remove" => Some(Action::Remove),
            _ => None,
        }
    }
}

/// Something a reviewer should notice about a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flag {
    /// A B2B guest account.
    Guest,
    /// A disabled account.
    Disabled,
}

impl Flag {
    /// `guest` or `disabled`.
    pub fn as_str(self) -> &'static str {
        match self {
            Flag::Guest => "guest",
            Flag::Disabled => "disabled",
        }
    }

    /// Parses [`Flag::as_str`].
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "guest" => Some(Flag::Guest),
            "disabled" => Some(Flag::Disabled),
            _ => None,
        }
    }
}

/// One add or remove.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    /// Add or remove.
    pub action: Action,
    /// The user's object id: the only field `apply` acts on.
    pub user_id: ObjectId,
    /// userPrincipalName, for people.
    pub upn: String,
    /// The user's mail, when set.
    pub mail: Option<String>,
    /// The user's display name, when known.
    pub display_name: Option<String>,
    /// For an add, the contact's line in the list; for a remove from a file, the member's line.
    pub source_line: Option<u64>,
    /// Why: which rule produced the change.
    pub reason: String,
    /// Guest or disabled, for the reviewer's attention.
    pub flags: Vec<Flag>,
}

/// Why an entry will not be acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipKind {
    /// The contact's address is malformed.
    Invalid,
    /// No user has the contact's address.
    Unresolved,
    /// More than one user has the contact's address.
    Ambiguous,
    /// The contact repeats an earlier one (same address, or same user).
    Duplicate,
    /// A member that is not a user (group, device, service principal, contact): never removed.
    NonUserMember,
    /// A member on the keep list: never removed.
    Kept,
    /// A remove left out because of `--add-only`.
    SuppressedRemove,
    /// An add left out because of `--remove-only`.
    SuppressedAdd,
}

impl SkipKind {
    /// All kinds, in the order tables show them.
    pub const ALL: [SkipKind; 8] = [
        SkipKind::Invalid,
        SkipKind::Unresolved,
        SkipKind::Ambiguous,
        SkipKind::Duplicate,
        SkipKind::NonUserMember,
        SkipKind::Kept,
        SkipKind::SuppressedRemove,
        SkipKind::SuppressedAdd,
    ];

    /// The name used in the encodings.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipKind::Invalid => "invalid",
            SkipKind::Unresolved => "unresolved",
            SkipKind::Ambiguous => "ambiguous",
            SkipKind::Duplicate => "duplicate",
            SkipKind::NonUserMember => "non_user_member",
            SkipKind::Kept => "kept",
            SkipKind::SuppressedRemove => "suppressed_remove",
            SkipKind::SuppressedAdd => "suppressed_add",
        }
    }

    /// Parses [`SkipKind::as_str`].
    pub fn parse(raw: &str) -> Option<Self> {
        SkipKind::ALL.into_iter().find(|k| k.as_str() == raw)
    }

    /// A short phrase for people.
    pub fn label(self) -> &'static str {
        match self {
            SkipKind::Invalid => "invalid address",
            SkipKind::Unresolved => "no matching user",
            SkipKind::Ambiguous => "several matching users",
            SkipKind::Duplicate => "duplicate",
            SkipKind::NonUserMember => "not a user",
            SkipKind::Kept => "on the keep list",
            SkipKind::SuppressedRemove => "remove left out (--add-only)",
            SkipKind::SuppressedAdd => "add left out (--remove-only)",
        }
    }
}

/// An entry that will not be acted on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Skipped {
    /// Why.
    pub kind: SkipKind,
    /// The contact's address as written, for list entries.
    pub email: Option<String>,
    /// The object id, for directory objects (members, resolved users).
    pub object_id: Option<ObjectId>,
    /// userPrincipalName, when known.
    pub upn: Option<String>,
    /// A display name, when known.
    pub display_name: Option<String>,
    /// The line in the list or the members file.
    pub source_line: Option<u64>,
    /// The details: the candidates of an ambiguous address, the line a duplicate repeats, …
    pub detail: String,
}

/// How many entries of each kind a group's plan holds. Readers check these against the lists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counts {
    /// Planned adds.
    pub add: u64,
    /// Planned removes.
    pub remove: u64,
    /// Entries not acted on, by kind (every kind present, zero or not).
    pub not_acted_on: BTreeMap<SkipKind, u64>,
}

impl Counts {
    /// Counts the entries of `changes` and `skipped`.
    pub fn tally(changes: &[Change], skipped: &[Skipped]) -> Counts {
        let mut counts =
            Counts { not_acted_on: SkipKind::ALL.into_iter().map(|k| (k, 0)).collect(), ..Counts::default() };
        for change in changes {
            match change.action {
                Action::Add => counts.add += 1,
                Action::Remove => counts.remove += 1,
            }
        }
        for entry in skipped {
            *counts.not_acted_on.entry(entry.kind).or_insert(0) += 1;
        }
        counts
    }

    /// The number of entries not acted on, all kinds together.
    pub fn not_acted_on_total(&self) -> u64 {
        self.not_acted_on.values().sum()
    }
}

impl GroupPlan {
    /// The label people know the group by: its display name, else its id.
    pub fn label(&self) -> String {
        match &self.display_name {
            Some(name) => format!("{name} ({})", self.group_id),
            None => self.group_id.to_string(),
        }
    }

    /// The changes of one action.
    pub fn changes_of(&self, action: Action) -> impl Iterator<Item = &Change> {
        self.changes.iter().filter(move |c| c.action == action)
    }

    /// The user membership the plan aims for: the precondition's members, plus adds, minus removes.
    pub fn target_members(&self) -> std::collections::BTreeSet<ObjectId> {
        let mut target: std::collections::BTreeSet<ObjectId> = self.precondition.member_ids.iter().cloned().collect();
        for change in &self.changes {
            match change.action {
                Action::Add => target.insert(change.user_id.clone()),
                Action::Remove => target.remove(&change.user_id),
            };
        }
        target
    }
}

impl Plan {
    /// The first group in which two changes name the same user (object id) or the same UPN (compared
    /// case-insensitively), described for people; `None` when every change of a group names its own user.
    /// One person may of course be in several groups. A plan that repeats a user is refused (exit 27): a second
    /// label for one object, or one label on two objects, hides from the reviewer what is changed.
    pub fn repeated_change(&self) -> Option<String> {
        for group in &self.groups {
            let mut ids = std::collections::BTreeMap::new();
            let mut upns = std::collections::BTreeMap::new();
            for change in &group.changes {
                if let Some(first) = ids.insert(&change.user_id, change) {
                    return Some(format!(
                        "group {}: user {} has two changes ({} as {}, {} as {})",
                        group.label(),
                        change.user_id,
                        first.action.as_str(),
                        first.upn,
                        change.action.as_str(),
                        change.upn
                    ));
                }
                if let Some(first) = upns.insert(change.upn.to_lowercase(), change) {
                    return Some(format!(
                        "group {}: two changes show the UPN {} ({} of object {}, {} of object {})",
                        group.label(),
                        change.upn,
                        first.action.as_str(),
                        first.user_id,
                        change.action.as_str(),
                        change.user_id
                    ));
                }
            }
        }
        None
    }

    /// Total adds and removes over all groups.
    pub fn totals(&self) -> (u64, u64) {
        self.groups.iter().fold((0, 0), |(a, r), g| (a + g.counts.add, r + g.counts.remove))
    }

    /// True when `now` is past the plan's expiry.
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        now > self.expires_at
    }

    /// Checks what a decoder cannot check field by field: the format marker and version, and that counts and
    /// preconditions agree with the lists they describe. Both decoders call this.
    pub fn validate(&self) -> Result<(), PlanError> {
        if self.format != FORMAT_NAME {
            return Err(PlanError::Malformed(format!("this is not a writeback plan (format is '{}')", self.format)));
        }
        check_version(&self.format_version)?;
        if self.expires_at < self.created_at {
            return Err(PlanError::Malformed("expires_at is before created_at".into()));
        }
        if self.groups.is_empty() {
            return Err(PlanError::Malformed("the plan names no group".into()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for group in &self.groups {
            if !seen.insert(&group.group_id) {
                return Err(PlanError::Malformed(format!("group {} appears twice", group.group_id)));
            }
            let tally = Counts::tally(&group.changes, &group.not_acted_on);
            if tally != group.counts {
                return Err(PlanError::Malformed(format!(
                    "group {}: the counts do not match the listed changes (counts say {} adds and {} removes, the lists hold {} and {})",
                    group.group_id, group.counts.add, group.counts.remove, tally.add, tally.remove
                )));
            }
            group.precondition.check().map_err(|m| PlanError::Malformed(format!("group {}: {m}", group.group_id)))?;
        }
        Ok(())
    }
}

/// Checks that this build reads the `MAJOR.MINOR` format version (see [`version`]).
pub fn check_version(raw: &str) -> Result<(), PlanError> {
    version::check(raw).map(|_| ())
}

/// What can be wrong with a plan file's content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The bytes are not a well-formed plan.
    #[error("{0}")]
    Malformed(String),
    /// The plan's format version is newer than any this build reads.
    #[error("format version {0} is newer than this writeback reads (it reads up to {newest}); upgrade writeback to read it", newest = version::newest())]
    UnsupportedVersion(String),
    /// The plan's format version is older than (or otherwise not) one this build reads.
    #[error("format version {0} is not one this writeback reads (it reads {known}); make the plan again with this writeback", known = version::KNOWN.iter().map(|k| k.version).collect::<Vec<_>>().join(", "))]
    UnknownVersion(String),
}

impl PlanError {
    /// True for the two version refusals (exit 14).
    pub fn is_version(&self) -> bool {
        matches!(self, PlanError::UnsupportedVersion(_) | PlanError::UnknownVersion(_))
    }
}

/// Decodes a plan from its bytes, JSON or CSV, chosen by the first non-space byte.
pub fn decode(bytes: &[u8]) -> Result<Plan, PlanError> {
    let start = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    match start.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => json::decode(bytes),
        Some(b'#') => csv::decode(bytes),
        Some(_) => Err(PlanError::Malformed("the file is neither a JSON nor a CSV plan".into())),
        None => Err(PlanError::Malformed("the file is empty".into())),
    }
}

/// The two encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PlanFormat {
    /// Pretty JSON (the default).
    Json,
    /// RFC 4180 CSV with `#` metadata lines.
    Csv,
}

/// Encodes a plan in the chosen format.
pub fn encode(plan: &Plan, format: PlanFormat) -> Vec<u8> {
    match format {
        PlanFormat::Json => json::encode(plan),
        PlanFormat::Csv => csv::encode(plan),
    }
}

/// A duration for people, in its two largest units, e.g. `3 days 4 hours`, `25 minutes`, `30 days` (a zero second
/// unit is left out; negative durations read as zero).
pub fn human_duration(d: chrono::TimeDelta) -> String {
    let secs = d.num_seconds().max(0);
    let (days, hours, minutes) = (secs / 86_400, (secs % 86_400) / 3_600, (secs % 3_600) / 60);
    let unit = |n: i64, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    let two = |big: String, n: i64, word: &str| if n == 0 { big } else { format!("{big} {}", unit(n, word)) };
    if days > 0 {
        two(unit(days, "day"), hours, "hour")
    } else if hours > 0 {
        two(unit(hours, "hour"), minutes, "minute")
    } else if minutes > 0 {
        unit(minutes, "minute")
    } else {
        unit(secs, "second")
    }
}

/// Writes [`encode`]'s bytes to `out` (JSON as they are made, without holding them).
pub fn encode_to(plan: &Plan, format: PlanFormat, out: &mut impl std::io::Write) -> std::io::Result<()> {
    match format {
        PlanFormat::Json => json::encode_to(plan, out),
        PlanFormat::Csv => out.write_all(&csv::encode(plan)),
    }
}

/// RFC 3339 timestamps in UTC with whole seconds and a `Z`, the one spelling plans use.
pub mod timestamp {
    use super::*;
    use serde::{Deserializer, Serializer};

    /// Formats a timestamp.
    pub fn format(value: &DateTime<Utc>) -> String {
        value.to_rfc3339_opts(SecondsFormat::Secs, true)
    }

    /// Parses a timestamp written by [`format`] (any RFC 3339 form is accepted).
    pub fn parse(raw: &str) -> Result<DateTime<Utc>, String> {
        DateTime::parse_from_rfc3339(raw)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| format!("'{raw}' is not an RFC 3339 timestamp: {e}"))
    }

    /// serde: serialize.
    pub fn serialize<S: Serializer>(value: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format(value))
    }

    /// serde: deserialize.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<DateTime<Utc>, D::Error> {
        let raw = String::deserialize(deserializer)?;
        parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod sample_tests {
    use super::*;
    use crate::fixtures::sample_plan;

    #[test]
    fn encoding_to_a_writer_gives_the_same_bytes() {
        let plan = sample_plan();
        for format in [PlanFormat::Json, PlanFormat::Csv] {
            let mut out = Vec::new();
            encode_to(&plan, format, &mut out).unwrap();
            assert_eq!(out, encode(&plan, format));
        }
    }

    #[test]
    fn sample_plan_is_valid() {
        let plan = sample_plan();
        plan.validate().unwrap();
        assert_eq!(json::decode(&json::encode(&plan)).unwrap(), plan);
        assert!(plan.groups[0].changes.len() >= 3);
    }
}
