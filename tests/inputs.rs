//! The file inputs of `writeback plan`: the committed samples read as documented, and bad files are refused with a
//! message naming the file and line.
//!
//! The first half calls the readers directly. The second half runs the real binary.

mod support;

use std::path::{Path, PathBuf};

use writeback::directory::{entra_csv, MemberKind};
use writeback::plan::InputRole;
use writeback::source::politemail_csv;

fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("samples").join(name)
}

const ALL_STAFF_GROUP: &str = "b53a97e9-e214-49f9-9d7e-4e4a23c5c243";

#[test]
fn all_staff_sample_has_the_documented_messy_rows() {
    let list = politemail_csv::read(&sample("politemail-all-staff.csv"), None).unwrap();
    assert_eq!(list.contacts.len(), 312);
    assert_eq!(list.input.role, InputRole::Contacts);
    assert!(list.input.description.starts_with("PoliteMail CSV export "));
    let at = |line: u64| list.contacts.iter().find(|c| c.line == line).map(|c| c.email.as_str()).unwrap();
    // The lines samples/README.md points at.
    assert_eq!(at(7), "QUINN.OKAFOR@CONTOSO.EXAMPLE");
    assert_eq!(at(19), "  Zoe.Garcia@contoso.example ");
    assert_eq!(at(25), "Yara.Usman@contoso.example");
    assert_eq!(at(44), "Yara.Usman@contoso.example");
    assert_eq!(at(95), "yara.usman@contoso.example");
    assert_eq!(at(33), "Carol.Chen@contoso.example");
    assert_eq!(at(49), "deepa@contoso.example");
    assert_eq!(at(65), "sam.rivera@contoso.example");
    assert_eq!(at(67), "Farah.Silva@Contoso.Example");
    assert_eq!(at(81), "alex.kim@fabrikam.example");
    assert_eq!(at(98), "Morgan.Price@contoso.example");
    assert_eq!(at(129), "jamie.ortiz@contoso.example");
    assert_eq!(at(160), "press@northwind.example");
    assert_eq!(at(191), "lee.walker@contoso");
    assert_eq!(at(222), "Dana Brooks <dana.brooks@contoso.example>");
    assert!(writeback::identity::Email::parse(at(191)).is_err());
    assert!(writeback::identity::Email::parse(at(222)).is_err());
}

#[test]
fn managers_sample_uses_semicolons() {
    let list = politemail_csv::read(&sample("politemail-managers.csv"), None).unwrap();
    assert_eq!(list.contacts.len(), 31);
    assert_eq!(list.contacts[0].line, 2);
    assert!(list.contacts.iter().all(|c| c.first_name.is_some() && c.display_name.is_none()));
    assert_eq!(list.contacts.iter().find(|c| c.line == 14).unwrap().email, "Carol.Chen@contoso.example");
}

#[test]
fn member_samples() {
    let (members, input) = entra_csv::read_members(&sample("entra-members-all-staff.csv")).unwrap();
    assert_eq!(input.role, InputRole::Members);
    assert_eq!(members.len(), 289);
    let kind_at = |line: u64| members.iter().find(|m| m.source_line == Some(line)).unwrap().kind.clone();
    assert_eq!(kind_at(12), MemberKind::Group);
    assert_eq!(kind_at(42), MemberKind::Device);
    assert_eq!(kind_at(72), MemberKind::ServicePrincipal);
    assert_eq!(kind_at(102), MemberKind::OrgContact);
    assert_eq!(members.iter().filter(|m| m.kind == MemberKind::User).count(), 285);

    let (managers, _) = entra_csv::read_members(&sample("entra-members-managers.csv")).unwrap();
    assert_eq!(managers.len(), 27);
    assert!(managers.iter().all(|m| m.kind == MemberKind::User && m.mail.is_some()));
}

#[test]
fn users_sample() {
    let (users, input) = entra_csv::read_users(&sample("entra-users.csv")).unwrap();
    assert_eq!(input.role, InputRole::Users);
    assert_eq!(users.len(), 340);
    let by_upn = |upn: &str| users.iter().find(|u| u.upn == upn).unwrap();
    assert!(by_upn("alex.kim_fabrikam.example#EXT#@contoso.example").is_guest());
    assert!(by_upn("morgan.price@contoso.example").is_disabled());
    assert!(by_upn("diyer@contoso.example").proxy_addresses.iter().any(|p| p == "smtp:deepa@contoso.example"));
    assert_eq!(by_upn("cchen@contoso.example").mail.as_deref(), Some("Carol.Chen@contoso.example"));
    let sams = users
        .iter()
        .filter(|u| u.mail.as_deref().is_some_and(|m| m.eq_ignore_ascii_case("sam.rivera@contoso.example")));
    assert_eq!(sams.count(), 2);
}

#[test]
fn fake_seeds_match_the_csv_samples() {
    let tenant: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sample("fake-tenant.json")).unwrap()).unwrap();
    let (users, _) = entra_csv::read_users(&sample("entra-users.csv")).unwrap();
    let seeded: Vec<&str> = tenant["users"].as_array().unwrap().iter().map(|u| u["id"].as_str().unwrap()).collect();
    assert_eq!(seeded, users.iter().map(|u| u.id.as_str()).collect::<Vec<_>>());
    let group = tenant["groups"].as_array().unwrap().iter().find(|g| g["id"] == ALL_STAFF_GROUP).unwrap();
    let (members, _) = entra_csv::read_members(&sample("entra-members-all-staff.csv")).unwrap();
    let seeded: Vec<&str> = group["members"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
    assert_eq!(seeded, members.iter().map(|m| m.id.as_str()).collect::<Vec<_>>());

    let politemail: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sample("fake-politemail.json")).unwrap()).unwrap();
    let list = politemail["lists"].as_array().unwrap().iter().find(|l| l["ID"] == 12).unwrap();
    let csv = politemail_csv::read(&sample("politemail-all-staff.csv"), None).unwrap();
    let seeded: Vec<&str> = list["contacts"].as_array().unwrap().iter().map(|c| c["Email"].as_str().unwrap()).collect();
    assert_eq!(seeded, csv.contacts.iter().map(|c| c.email.as_str()).collect::<Vec<_>>());
}

#[test]
fn keep_sample_has_comments_and_both_forms() {
    let text = std::fs::read_to_string(sample("keep.txt")).unwrap();
    let entries: Vec<&str> =
        text.lines().map(|l| l.split('#').next().unwrap_or_default().trim()).filter(|l| !l.is_empty()).collect();
    assert_eq!(entries, ["breakglass@contoso.example", "e0d53f2d-58a7-46f9-871a-9a9a74b91ec7"]);
}

// ----- Bad files, through the readers --------------------------------------------------------------------------

fn contacts_error(bytes: &[u8]) -> String {
    politemail_csv::parse(bytes, Path::new("list.csv"), None).unwrap_err().to_string()
}

#[test]
fn bad_contact_files_name_file_and_line() {
    assert!(contacts_error(b"").starts_with("list.csv: the file is empty"));
    assert!(contacts_error(b"Name,Company\nA,B\n").starts_with("list.csv:1: no e-mail column"));
    assert!(
        contacts_error(b"Email,Name\na@x.example,Ren\xe9\n").starts_with("list.csv:2: column 'Name': not UTF-8 text")
    );
    assert!(contacts_error(b"Email,Name\na@x.example,A\nb@x.example,B,C\n").starts_with("list.csv:3: this row has 3"));
    assert!(contacts_error(b"Email,Name\na@x.example,\"A\nb@x.example,B\n")
        .starts_with("list.csv:2: a quote (\") opens a cell on this line and is never closed"));
}

#[test]
fn bad_member_files_name_file_line_and_column() {
    let err = entra_csv::parse_members(b"Object ID,User principal name\n{nope},a@x.example\n", Path::new("m.csv"))
        .unwrap_err();
    assert_eq!(err.exit_code(), writeback::error::exit::INPUT);
    assert!(err.to_string().starts_with("m.csv:2: column 'Object ID': '{nope}' is not an object id"));
}

// ----- The real binary -------------------------------------------------------------------------------------------

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Runs `writeback plan` with the samples, replacing the contacts file by `contacts`; returns (exit code, stderr,
/// whether the plan file exists).
fn plan_with_contacts(contacts: &[u8]) -> (i32, String, bool) {
    plan_with_contacts_and(contacts, &[])
}

/// [`plan_with_contacts`] with more arguments.
fn plan_with_contacts_and(contacts: &[u8], extra: &[&str]) -> (i32, String, bool) {
    let dir = tempfile::tempdir().unwrap();
    let contacts = write(dir.path(), "contacts.csv", contacts);
    let key = dir.path().join("key");
    std::fs::copy(sample("keys/demo-planner"), &key).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let out = dir.path().join("plan.json");
    let output = support::command(dir.path())
        .arg("plan")
        .arg("--contacts")
        .arg(&contacts)
        .arg("--members")
        .arg(sample("entra-members-all-staff.csv"))
        .arg("--users")
        .arg(sample("entra-users.csv"))
        .args(["--group", ALL_STAFF_GROUP])
        .arg("--key")
        .arg(&key)
        .arg("--out")
        .arg(&out)
        .args(extra)
        .output()
        .unwrap();
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stderr).into_owned(), out.exists())
}

#[test]
fn plan_refuses_bad_contact_files() {
    let cases: &[(&[u8], &str)] = &[
        (b"", "contacts.csv: the file is empty"),
        (b"\xef\xbb\xbf", "contacts.csv: the file is empty"),
        (b"Name,Company\nA,B\n", "contacts.csv:1: no e-mail column"),
        (b"Email,Name\na@contoso.example,Ren\xe9\n", "contacts.csv:2: column 'Name': not UTF-8 text"),
        (b"\xff\xfeE\x00", "UTF-16"),
        (b"Email,Name\na@contoso.example,A\nb@contoso.example,B,C\n", "contacts.csv:3: this row has 3 cells"),
        (b"Email,Name\na@contoso.example,\"A\nb@contoso.example,B\n", "contacts.csv:2: a quote"),
    ];
    for (bytes, expected) in cases {
        let (code, stderr, wrote) = plan_with_contacts(bytes);
        assert_eq!(code, writeback::error::exit::INPUT, "{expected}: {stderr}");
        assert!(stderr.contains(expected), "expected {expected:?} in {stderr:?}");
        assert!(!wrote, "{expected}: a plan was written");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr:?}");
    }
}

#[test]
fn plan_refuses_header_only_contacts_unless_allowed() {
    // A header-only export would plan "remove everyone": refused, unless the planner says the list is empty.
    let (code, stderr, wrote) = plan_with_contacts(b"Email,First Name\r\n");
    assert_eq!(code, writeback::error::exit::INPUT, "{stderr}");
    assert!(stderr.contains("contacts.csv: ") && stderr.contains("has no contacts"), "{stderr}");
    assert!(!wrote);
    let (code, stderr, wrote) = plan_with_contacts_and(b"Email,First Name\r\n", &["--allow-empty"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(wrote);
}

/// Runs `writeback plan` on the all-staff samples, each replaced by the given bytes when some; returns (exit code,
/// stderr).
fn plan_with(contacts: Option<&[u8]>, members: Option<&[u8]>, users: Option<&[u8]>, group: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, bytes: Option<&[u8]>, sample_name: &str| match bytes {
        Some(bytes) => write(dir.path(), name, bytes),
        None => sample(sample_name),
    };
    let key = dir.path().join("key");
    std::fs::copy(sample("keys/demo-planner"), &key).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let output = support::command(dir.path())
        .arg("plan")
        .arg("--contacts")
        .arg(file("contacts.csv", contacts, "politemail-all-staff.csv"))
        .arg("--members")
        .arg(file("members.csv", members, "entra-members-all-staff.csv"))
        .arg("--users")
        .arg(file("users.csv", users, "entra-users.csv"))
        .args(["--group", group])
        .arg("--key")
        .arg(&key)
        .arg("--out")
        .arg(dir.path().join("plan.json"))
        .output()
        .unwrap();
    assert!(!dir.path().join("plan.json").exists(), "a plan was written");
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn plan_reports_the_first_bad_input_in_reading_order() {
    // Offline plans read the users first (to stream the other files); errors still come in the order of the
    // options: the list, the group, the members, the users.
    let bad: &[u8] = b"Name,Company\nA,B\n";
    let (code, stderr) = plan_with(Some(bad), Some(bad), Some(bad), "not-a-guid");
    assert_eq!(code, writeback::error::exit::INPUT, "{stderr}");
    assert!(stderr.contains("contacts.csv:1: no e-mail column"), "{stderr}");
    let (code, stderr) = plan_with(None, Some(bad), Some(bad), "not-a-guid");
    assert_eq!(code, writeback::error::exit::USAGE, "{stderr}");
    assert!(stderr.contains("is not an object id"), "{stderr}");
    let (code, stderr) = plan_with(None, Some(bad), Some(bad), ALL_STAFF_GROUP);
    assert!(stderr.contains("members.csv:1: no object id column"), "{stderr}");
    assert_eq!(code, writeback::error::exit::INPUT, "{stderr}");
    let (code, stderr) = plan_with(None, None, Some(bad), ALL_STAFF_GROUP);
    assert_eq!(code, writeback::error::exit::INPUT, "{stderr}");
    assert!(stderr.contains("users.csv:1: no object id column"), "{stderr}");
    let members_row = b"Object ID,User principal name\nnot-a-guid,a@contoso.example\n";
    let (code, stderr) = plan_with(None, Some(members_row), None, ALL_STAFF_GROUP);
    assert_eq!(code, writeback::error::exit::INPUT, "{stderr}");
    assert!(stderr.contains("members.csv:2: column 'Object ID'"), "{stderr}");
}
