//! Values the unit tests share, so each test module does not grow its own copy: object ids, changes, and a
//! sample plan built through `reconcile`. Compiled for tests only.

use crate::directory::{DirectoryUser, GroupMember, MemberKind, UserType};
use crate::identity::ObjectId;
use crate::plan::{
    timestamp, Action, Change, Counts, GroupPlan, InputRecord, InputRole, Plan, PlanOptions, FORMAT_NAME,
    FORMAT_VERSION,
};
use crate::reconcile::{reconcile, ReconcileOptions};
use crate::source::Contact;

/// The object id `00000000-0000-0000-0000-` followed by `n` in twelve decimal digits.
pub fn id(n: u32) -> ObjectId {
    ObjectId::parse(&uid(n)).expect("a well-formed object id")
}

/// [`id`] as a string, the way Graph writes it.
pub fn uid(n: u32) -> String {
    format!("00000000-0000-0000-0000-{n:012}")
}

/// A planned change of user `n` (UPN `u{n}@contoso.example`), with no source line or flags.
pub fn change(action: Action, n: u32) -> Change {
    Change {
        action,
        user_id: id(n),
        upn: format!("u{n}@contoso.example"),
        mail: None,
        display_name: None,
        source_line: None,
        reason: "test".into(),
        flags: vec![],
    }
}

/// A two-group plan with every kind of entry, built through `reconcile`.
pub fn sample_plan() -> Plan {
    let users: Vec<DirectoryUser> = (1..=6)
        .map(|n| DirectoryUser {
            id: id(n),
            upn: format!("user{n}@contoso.example"),
            display_name: Some(format!("User, \"{n}\"")),
            mail: (n != 3).then(|| format!("user{n}@contoso.example")),
            user_type: if n == 4 { UserType::Guest } else { UserType::Member },
            account_enabled: Some(n != 5),
            proxy_addresses: vec![],
        })
        .collect();
    let contact = |line, email: &str| Contact { email: email.into(), line, ..Contact::default() };
    let contacts = vec![
        contact(2, "user1@contoso.example"),
        contact(3, "User4@Contoso.example"),
        contact(4, "user5@contoso.example"),
        contact(5, "not an address"),
        contact(6, "nobody@contoso.example"),
        contact(7, "user1@contoso.example"),
    ];
    let member = |n: u32, kind: MemberKind| GroupMember {
        id: id(n),
        kind,
        upn: Some(format!("user{n}@contoso.example")),
        display_name: None,
        mail: None,
        source_line: Some(n as u64),
    };
    let members = vec![member(1, MemberKind::User), member(2, MemberKind::User), member(9, MemberKind::Device)];
    let users = crate::directory::user_table::UserTable::from_users(&users).unwrap();
    let r = reconcile(&contacts, &users, &members, &ReconcileOptions::default());
    let group = |id: ObjectId, name: Option<&str>, r: crate::reconcile::Reconciliation| GroupPlan {
        group_id: id,
        display_name: name.map(str::to_string),
        options: PlanOptions::default(),
        inputs: vec![InputRecord {
            role: InputRole::Contacts,
            description: "PoliteMail CSV export list.csv".into(),
            sha256: "ab".repeat(32),
        }],
        precondition: r.precondition,
        counts: Counts::tally(&r.changes, &r.not_acted_on),
        changes: r.changes,
        not_acted_on: r.not_acted_on,
    };
    let second = reconcile(&contacts[..1], &users, &[], &ReconcileOptions::default());
    Plan {
        format: FORMAT_NAME.into(),
        format_version: FORMAT_VERSION.into(),
        plan_id: uuid::Uuid::from_u128(0x1234),
        created_at: timestamp::parse("2026-11-27T10:00:00Z").unwrap(),
        expires_at: timestamp::parse("2026-12-04T10:00:00Z").unwrap(),
        signer: "planner@contoso.example".into(),
        tool_version: crate::tool_version(),
        tenant_id: Some("72f988bf-86f1-41af-91ab-2d7cd011db47".into()),
        entra_actor: Some(crate::identity::EntraActor {
            kind: crate::identity::ActorKind::User,
            id: "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9".into(),
            name: Some("pat.planner@contoso.example".into()),
            tenant_id: Some("72f988bf-86f1-41af-91ab-2d7cd011db47".into()),
            auth: "azure-cli".into(),
        }),
        groups: vec![group(id(100), Some("All Staff, -everyone-"), r), group(id(101), None, second)],
    }
}
