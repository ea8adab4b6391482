//! Resolution and diff: from a list of contacts, the directory's users and a group's current members to the
//! adds, removes and entries not acted on. Pure: no I/O, no clock, no randomness, so the offline (CSV) and
//! live (Graph) paths share it unchanged and give the same plan.
//!
//! Rules:
//! - An address is normalized (trimmed, lowercased) and checked; a malformed one is `invalid`.
//! - A contact resolves to exactly one user: by userPrincipalName, then `mail`, then an `smtp:` proxy address.
//!   The first rule that finds anyone decides; if it finds two or more users, the contact is `ambiguous`. No
//!   match at all is `unresolved`.
//! - A contact that repeats an earlier address, or resolves to a user an earlier contact already resolved to,
//!   is a `duplicate` of that earlier line.
//! - Adds are resolved users who are not members; removes are user members nobody resolved to, except those
//!   on the keep list. Members that are not users are reported and never removed.

use std::collections::{BTreeSet, HashMap};

use crate::directory::{DirectoryUser, GroupMember, MemberKind};
use crate::identity::{address_key, smtp_proxy_address, Email, ObjectId};
use crate::plan::{Action, Change, Flag, Precondition, SkipKind, Skipped};
use crate::source::Contact;

/// Users that are never removed, by object id or userPrincipalName.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeepList {
    ids: BTreeSet<ObjectId>,
    upns: BTreeSet<String>,
}

impl KeepList {
    /// Reads a keep list: one object id or UPN per line; blank lines and `#` comments are ignored. Returns the
    /// 1-based line numbers of entries that are neither.
    pub fn parse(text: &str) -> Result<KeepList, Vec<(u64, String)>> {
        let mut keep = KeepList::default();
        let mut bad = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let entry = line.split('#').next().unwrap_or("").trim().trim_start_matches('\u{feff}');
            if entry.is_empty() {
                continue;
            }
            if let Ok(id) = ObjectId::parse(entry) {
                keep.ids.insert(id);
            } else if entry.contains('@') && !entry.contains(char::is_whitespace) {
                keep.upns.insert(address_key(entry));
            } else {
                bad.push((index as u64 + 1, entry.to_string()));
            }
        }
        if bad.is_empty() {
            Ok(keep)
        } else {
            Err(bad)
        }
    }

    /// Adds one id.
    pub fn insert_id(&mut self, id: ObjectId) {
        self.ids.insert(id);
    }

    /// Adds one UPN.
    pub fn insert_upn(&mut self, upn: &str) {
        self.upns.insert(address_key(upn));
    }

    /// True when the member is on the list by id or UPN.
    pub fn contains(&self, id: &ObjectId, upn: Option<&str>) -> bool {
        self.ids.contains(id) || upn.is_some_and(|u| self.upns.contains(&address_key(u)))
    }

    /// True when the list is empty.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty() && self.upns.is_empty()
    }
}

/// Options that shape the diff.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileOptions {
    /// Plan adds only; removes are reported as suppressed.
    pub add_only: bool,
    /// Plan removes only; adds are reported as suppressed.
    pub remove_only: bool,
    /// Members never removed.
    pub keep: KeepList,
}

/// The outcome for one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconciliation {
    /// Adds (sorted by UPN), then removes (sorted by UPN).
    pub changes: Vec<Change>,
    /// Everything not acted on, by kind, then by line.
    pub not_acted_on: Vec<Skipped>,
    /// The user membership the changes were computed against.
    pub precondition: Precondition,
    /// Things the person running `plan` should see at once (duplicates collapsed, …).
    pub warnings: Vec<String>,
}

/// How a contact was matched to its user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MatchedBy {
    Upn,
    Mail,
    ProxyAddress,
}

impl MatchedBy {
    fn label(self) -> &'static str {
        match self {
            MatchedBy::Upn => "userPrincipalName",
            MatchedBy::Mail => "mail",
            MatchedBy::ProxyAddress => "proxy address",
        }
    }
}

/// Index entries: one user, or several (kept small for the common case of one).
#[derive(Debug, Clone)]
enum Hits {
    One(u32),
    Many(Vec<u32>),
}

impl Hits {
    fn push(&mut self, user: u32) {
        match self {
            Hits::One(first) if *first != user => *self = Hits::Many(vec![*first, user]),
            Hits::One(_) => {}
            Hits::Many(list) => {
                if !list.contains(&user) {
                    list.push(user)
                }
            }
        }
    }

    fn as_slice(&self) -> &[u32] {
        match self {
            Hits::One(user) => std::slice::from_ref(user),
            Hits::Many(list) => list,
        }
    }
}

/// Users indexed by their lowercase UPN, mail and smtp proxy addresses.
pub struct UserIndex<'a> {
    users: &'a [DirectoryUser],
    by_upn: HashMap<String, Hits>,
    by_mail: HashMap<String, Hits>,
    by_proxy: HashMap<String, Hits>,
    by_id: HashMap<&'a ObjectId, u32>,
}

impl<'a> UserIndex<'a> {
    /// Indexes `users`.
    pub fn new(users: &'a [DirectoryUser]) -> UserIndex<'a> {
        let mut index = UserIndex {
            users,
            by_upn: HashMap::with_capacity(users.len()),
            by_mail: HashMap::with_capacity(users.len()),
            by_proxy: HashMap::new(),
            by_id: HashMap::with_capacity(users.len()),
        };
        for (position, user) in users.iter().enumerate() {
            let position = position as u32;
            index.by_id.insert(&user.id, position);
            add_hit(&mut index.by_upn, &user.upn, position);
            if let Some(mail) = &user.mail {
                add_hit(&mut index.by_mail, mail, position);
            }
            for proxy in &user.proxy_addresses {
                if let Some(address) = smtp_proxy_address(proxy) {
                    add_hit(&mut index.by_proxy, address, position);
                }
            }
        }
        index
    }

    /// The user with this object id, if the directory knows it.
    pub fn by_id(&self, id: &ObjectId) -> Option<&'a DirectoryUser> {
        self.by_id.get(id).map(|&i| &self.users[i as usize])
    }

    /// Resolves an address: the first of UPN, mail, proxy address that finds anyone decides.
    fn resolve(&self, email: &Email) -> Resolution<'a> {
        for (map, how) in [
            (&self.by_upn, MatchedBy::Upn),
            (&self.by_mail, MatchedBy::Mail),
            (&self.by_proxy, MatchedBy::ProxyAddress),
        ] {
            if let Some(hits) = map.get(email.as_str()) {
                let found: Vec<&'a DirectoryUser> = hits.as_slice().iter().map(|&i| &self.users[i as usize]).collect();
                return match found.as_slice() {
                    [one] => Resolution::Found(one, how),
                    _ => Resolution::Ambiguous(found, how),
                };
            }
        }
        Resolution::NotFound
    }
}

fn add_hit(map: &mut HashMap<String, Hits>, address: &str, user: u32) {
    let key = address_key(address);
    if key.is_empty() {
        return;
    }
    match map.get_mut(&key) {
        Some(hits) => hits.push(user),
        None => {
            map.insert(key, Hits::One(user));
        }
    }
}

enum Resolution<'a> {
    Found(&'a DirectoryUser, MatchedBy),
    Ambiguous(Vec<&'a DirectoryUser>, MatchedBy),
    NotFound,
}

/// A contact that resolved to a user.
struct Wanted<'c, 'u> {
    contact: &'c Contact,
    user: &'u DirectoryUser,
    how: MatchedBy,
}

/// Computes one group's changes. `users` is the part of the directory the contacts may resolve to (the whole
/// users export, or every user a Graph lookup returned); `members` is the group's current direct membership.
pub fn reconcile(
    contacts: &[Contact],
    users: &[DirectoryUser],
    members: &[GroupMember],
    options: &ReconcileOptions,
) -> Reconciliation {
    let index = UserIndex::new(users);
    let mut not_acted_on = Vec::new();
    let mut warnings = Vec::new();

    // 1. Resolve the contacts, collapsing duplicates onto the first line that named the address or user.
    let mut first_line_of_address: HashMap<Email, u64> = HashMap::with_capacity(contacts.len());
    let mut wanted: HashMap<&ObjectId, Wanted> = HashMap::with_capacity(contacts.len());
    let mut duplicates = 0u64;
    for contact in contacts {
        let email = match Email::parse(&contact.email) {
            Ok(email) => email,
            Err(why) => {
                not_acted_on.push(skipped_contact(SkipKind::Invalid, contact, why.to_string()));
                continue;
            }
        };
        if let Some(&first) = first_line_of_address.get(&email) {
            duplicates += 1;
            not_acted_on.push(skipped_contact(SkipKind::Duplicate, contact, format!("repeats line {first}")));
            continue;
        }
        first_line_of_address.insert(email.clone(), contact.line);
        match index.resolve(&email) {
            Resolution::Found(user, how) => {
                if let Some(earlier) = wanted.get(&user.id) {
                    duplicates += 1;
                    let mut entry = skipped_contact(
                        SkipKind::Duplicate,
                        contact,
                        format!("same user as line {} ({})", earlier.contact.line, earlier.contact.email.trim()),
                    );
                    entry.object_id = Some(user.id.clone());
                    entry.upn = Some(user.upn.clone());
                    not_acted_on.push(entry);
                } else {
                    wanted.insert(&user.id, Wanted { contact, user, how });
                }
            }
            Resolution::Ambiguous(found, how) => {
                let mut names: Vec<String> = found.iter().map(|u| format!("{} ({})", u.upn, u.id)).collect();
                names.sort();
                not_acted_on.push(skipped_contact(
                    SkipKind::Ambiguous,
                    contact,
                    format!("{} users have this {}: {}", found.len(), how.label(), names.join(", ")),
                ));
            }
            Resolution::NotFound => not_acted_on.push(skipped_contact(
                SkipKind::Unresolved,
                contact,
                "no user has this address as userPrincipalName, mail or proxy address".into(),
            )),
        }
    }
    if duplicates > 0 {
        warnings.push(format!(
            "{duplicates} duplicate contact{} collapsed onto the first line that named the same address or user",
            if duplicates == 1 { "" } else { "s" }
        ));
    }

    // 2. The current membership: users are diffed, other objects are reported and left alone.
    let mut member_users: HashMap<&ObjectId, &GroupMember> = HashMap::with_capacity(members.len());
    for member in members {
        if member.kind == MemberKind::User {
            member_users.insert(&member.id, member);
        } else {
            not_acted_on.push(Skipped {
                kind: SkipKind::NonUserMember,
                email: None,
                object_id: Some(member.id.clone()),
                upn: member.upn.clone().filter(|u| !u.is_empty()),
                display_name: member.display_name.clone(),
                source_line: member.source_line,
                detail: format!("a {} is never added or removed by writeback", member.kind.label()),
            });
        }
    }
    let precondition = Precondition::from_members(member_users.keys().copied());

    // 3. Adds: wanted users who are not members.
    let mut changes = Vec::new();
    for want in wanted.values() {
        if member_users.contains_key(&want.user.id) {
            continue;
        }
        let reason = format!("in the list (line {}), not a member; matched by {}", want.contact.line, want.how.label());
        if options.remove_only {
            not_acted_on.push(Skipped {
                kind: SkipKind::SuppressedAdd,
                email: Some(want.contact.email.trim().to_string()),
                object_id: Some(want.user.id.clone()),
                upn: Some(want.user.upn.clone()),
                display_name: want.user.display_name.clone(),
                source_line: Some(want.contact.line),
                detail: reason,
            });
            continue;
        }
        changes.push(Change {
            action: Action::Add,
            user_id: want.user.id.clone(),
            upn: want.user.upn.clone(),
            mail: want.user.mail.clone(),
            display_name: want.user.display_name.clone().or_else(|| want.contact.name()),
            source_line: Some(want.contact.line),
            reason,
            flags: flags_of(Some(want.user)),
        });
    }

    // 4. Removes: user members nobody resolved to.
    for member in member_users.values() {
        if wanted.contains_key(&member.id) {
            continue;
        }
        let known = index.by_id(&member.id);
        let upn = member.upn.clone().filter(|u| !u.is_empty()).or_else(|| known.map(|u| u.upn.clone()));
        let display_name = member.display_name.clone().or_else(|| known.and_then(|u| u.display_name.clone()));
        let kind = if options.keep.contains(&member.id, upn.as_deref()) {
            Some((SkipKind::Kept, "on the keep list: never removed"))
        } else if options.add_only {
            Some((SkipKind::SuppressedRemove, "member, not in the list; left alone because of --add-only"))
        } else {
            None
        };
        match kind {
            Some((kind, detail)) => not_acted_on.push(Skipped {
                kind,
                email: None,
                object_id: Some(member.id.clone()),
                upn,
                display_name,
                source_line: member.source_line,
                detail: detail.into(),
            }),
            None => changes.push(Change {
                action: Action::Remove,
                user_id: member.id.clone(),
                upn: upn.unwrap_or_default(),
                mail: member.mail.clone().or_else(|| known.and_then(|u| u.mail.clone())),
                display_name,
                source_line: member.source_line,
                reason: "a member, not in the list".into(),
                flags: flags_of(known),
            }),
        }
    }

    changes
        .sort_by(|a, b| (a.action, address_key(&a.upn), &a.user_id).cmp(&(b.action, address_key(&b.upn), &b.user_id)));
    not_acted_on.sort_by(|a, b| {
        (a.kind, a.source_line, &a.object_id, &a.email).cmp(&(b.kind, b.source_line, &b.object_id, &b.email))
    });
    Reconciliation { changes, not_acted_on, precondition, warnings }
}

fn skipped_contact(kind: SkipKind, contact: &Contact, detail: String) -> Skipped {
    Skipped {
        kind,
        email: Some(contact.email.trim().to_string()),
        object_id: None,
        upn: None,
        display_name: contact.name(),
        source_line: Some(contact.line),
        detail,
    }
}

fn flags_of(user: Option<&DirectoryUser>) -> Vec<Flag> {
    let mut flags = Vec::new();
    if let Some(user) = user {
        if user.is_guest() {
            flags.push(Flag::Guest);
        }
        if user.is_disabled() {
            flags.push(Flag::Disabled);
        }
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::UserType;

    fn oid(n: u32) -> ObjectId {
        ObjectId::parse(&format!("00000000-0000-0000-0000-{n:012}")).unwrap()
    }

    fn user(n: u32, upn: &str) -> DirectoryUser {
        DirectoryUser {
            id: oid(n),
            upn: upn.into(),
            display_name: Some(format!("User {n}")),
            mail: Some(upn.into()),
            user_type: UserType::Member,
            account_enabled: Some(true),
            proxy_addresses: vec![format!("SMTP:{upn}")],
        }
    }

    fn contact(line: u64, email: &str) -> Contact {
        Contact { email: email.into(), line, ..Contact::default() }
    }

    fn member(n: u32, upn: &str) -> GroupMember {
        GroupMember {
            id: oid(n),
            kind: MemberKind::User,
            upn: Some(upn.into()),
            display_name: None,
            mail: None,
            source_line: Some(n as u64 + 1),
        }
    }

    fn kinds(r: &Reconciliation) -> Vec<(SkipKind, Option<u64>)> {
        r.not_acted_on.iter().map(|s| (s.kind, s.source_line)).collect()
    }

    #[test]
    fn adds_and_removes() {
        let users = vec![user(1, "a@x.com"), user(2, "b@x.com"), user(3, "c@x.com")];
        let contacts = vec![contact(2, "A@X.com "), contact(3, "b@x.com")];
        let members = vec![member(2, "b@x.com"), member(3, "c@x.com")];
        let r = reconcile(&contacts, &users, &members, &ReconcileOptions::default());
        let summary: Vec<_> = r.changes.iter().map(|c| (c.action, c.user_id.clone())).collect();
        assert_eq!(summary, vec![(Action::Add, oid(1)), (Action::Remove, oid(3))]);
        assert_eq!(r.changes[0].source_line, Some(2));
        assert!(r.changes[0].reason.contains("userPrincipalName"));
        assert_eq!(r.precondition.member_count, 2);
        assert!(r.not_acted_on.is_empty());
    }

    #[test]
    fn resolution_order_upn_then_mail_then_proxy() {
        let mut by_mail = user(2, "mail-user@x.com");
        by_mail.mail = Some("shared@x.com".into());
        let mut by_proxy = user(3, "proxy-user@x.com");
        by_proxy.proxy_addresses.push("smtp:alias@x.com".into());
        let users = vec![user(1, "upn@x.com"), by_mail, by_proxy];
        let contacts = vec![contact(2, "upn@x.com"), contact(3, "shared@x.com"), contact(4, "ALIAS@x.com")];
        let r = reconcile(&contacts, &users, &[], &ReconcileOptions::default());
        let reasons: Vec<_> = r.changes.iter().map(|c| (c.user_id.clone(), c.reason.clone())).collect();
        assert_eq!(reasons.len(), 3);
        assert!(reasons.iter().any(|(id, why)| *id == oid(2) && why.ends_with("matched by mail")));
        assert!(reasons.iter().any(|(id, why)| *id == oid(3) && why.ends_with("matched by proxy address")));
    }

    #[test]
    fn upn_match_wins_over_another_users_mail() {
        let mut other = user(2, "other@x.com");
        other.mail = Some("a@x.com".into());
        let users = vec![user(1, "a@x.com"), other];
        let r = reconcile(&[contact(2, "a@x.com")], &users, &[], &ReconcileOptions::default());
        assert_eq!(r.changes.len(), 1);
        assert_eq!(r.changes[0].user_id, oid(1));
    }

    #[test]
    fn ambiguous_unresolved_invalid_and_duplicates() {
        let mut one = user(1, "one@x.com");
        one.mail = Some("team@x.com".into());
        let mut two = user(2, "two@x.com");
        two.mail = Some("Team@x.com".into());
        let users = vec![one, two, user(3, "c@x.com")];
        let contacts = vec![
            contact(2, "team@x.com"),
            contact(3, "nobody@x.com"),
            contact(4, "not-an-address"),
            contact(5, "c@x.com"),
            contact(6, " C@X.COM"),
            contact(7, "SMTP-alias-of-c@x.com"),
        ];
        let mut users = users;
        users[2].proxy_addresses.push("smtp:smtp-alias-of-c@x.com".into());
        let r = reconcile(&contacts, &users, &[], &ReconcileOptions::default());
        assert_eq!(r.changes.len(), 1);
        assert_eq!(
            kinds(&r),
            vec![
                (SkipKind::Invalid, Some(4)),
                (SkipKind::Unresolved, Some(3)),
                (SkipKind::Ambiguous, Some(2)),
                (SkipKind::Duplicate, Some(6)),
                (SkipKind::Duplicate, Some(7)),
            ]
        );
        let ambiguous = &r.not_acted_on[2];
        assert!(ambiguous.detail.contains("one@x.com") && ambiguous.detail.contains("two@x.com"));
        assert!(r.not_acted_on[3].detail.contains("repeats line 5"));
        assert!(r.not_acted_on[4].detail.contains("same user as line 5"));
        assert_eq!(r.warnings.len(), 1);
    }

    #[test]
    fn non_user_members_are_reported_not_removed() {
        let group = GroupMember {
            id: oid(9),
            kind: MemberKind::Group,
            upn: None,
            display_name: Some("Nested".into()),
            mail: None,
            source_line: Some(4),
        };
        let r = reconcile(&[], &[], &[group], &ReconcileOptions::default());
        assert!(r.changes.is_empty());
        assert_eq!(kinds(&r), vec![(SkipKind::NonUserMember, Some(4))]);
        assert_eq!(r.precondition.member_count, 0);
    }

    #[test]
    fn keep_add_only_remove_only() {
        let users = vec![user(1, "a@x.com"), user(2, "b@x.com"), user(3, "c@x.com")];
        let contacts = vec![contact(2, "a@x.com")];
        let members = vec![member(2, "b@x.com"), member(3, "C@x.com")];
        let mut keep = KeepList::default();
        keep.insert_upn("c@X.com");
        let r = reconcile(&contacts, &users, &members, &ReconcileOptions { keep: keep.clone(), ..Default::default() });
        assert_eq!(r.changes.iter().filter(|c| c.action == Action::Remove).count(), 1);
        assert!(kinds(&r).contains(&(SkipKind::Kept, Some(4))));

        let r = reconcile(&contacts, &users, &members, &ReconcileOptions { add_only: true, ..Default::default() });
        assert!(r.changes.iter().all(|c| c.action == Action::Add));
        assert_eq!(r.not_acted_on.iter().filter(|s| s.kind == SkipKind::SuppressedRemove).count(), 2);

        let r = reconcile(&contacts, &users, &members, &ReconcileOptions { remove_only: true, ..Default::default() });
        assert!(r.changes.iter().all(|c| c.action == Action::Remove));
        assert_eq!(r.not_acted_on.iter().filter(|s| s.kind == SkipKind::SuppressedAdd).count(), 1);
    }

    #[test]
    fn guests_and_disabled_are_flagged() {
        let mut guest = user(1, "ext_partner.com#EXT#@x.onmicrosoft.com");
        guest.mail = Some("partner@partner.com".into());
        guest.user_type = UserType::Guest;
        let mut disabled = user(2, "gone@x.com");
        disabled.account_enabled = Some(false);
        let r = reconcile(
            &[contact(2, "partner@partner.com"), contact(3, "gone@x.com")],
            &[guest, disabled],
            &[],
            &ReconcileOptions::default(),
        );
        let flags: Vec<_> = r.changes.iter().map(|c| (c.user_id.clone(), c.flags.clone())).collect();
        assert!(flags.contains(&(oid(1), vec![Flag::Guest])));
        assert!(flags.contains(&(oid(2), vec![Flag::Disabled])));
    }

    #[test]
    fn keep_list_parsing() {
        let keep =
            KeepList::parse("# comment\nceo@x.com\n\n00000000-0000-0000-0000-000000000001 # the board\n").unwrap();
        assert!(keep.contains(&oid(1), None));
        assert!(keep.contains(&oid(5), Some("CEO@x.com")));
        assert_eq!(KeepList::parse("ok@x.com\nnot valid\n").unwrap_err(), vec![(2, "not valid".to_string())]);
    }

    #[test]
    fn output_is_deterministic() {
        let users: Vec<_> = (0..50).map(|n| user(n, &format!("u{n}@x.com"))).collect();
        let contacts: Vec<_> = (0..30).map(|n| contact(n as u64 + 2, &format!("u{n}@x.com"))).collect();
        let members: Vec<_> = (20..50).map(|n| member(n, &format!("u{n}@x.com"))).collect();
        let a = reconcile(&contacts, &users, &members, &ReconcileOptions::default());
        let b = reconcile(&contacts, &users, &members, &ReconcileOptions::default());
        assert_eq!(a, b);
        assert_eq!(a.changes.len(), 20 + 20);
    }
}
