//! End-to-end tests of signatures and trust: `writeback keygen`, `writeback verify`, and interoperability with
//! the real `ssh-keygen` in both directions.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use assert_cmd::prelude::*;
use chrono::{DateTime, Duration, TimeZone, Utc};
use predicates::prelude::*;
use writeback::identity::ObjectId;
use writeback::plan::{self, Action, Change, Counts, GroupPlan, Plan, PlanOptions, Precondition};
use writeback::trust::{self, keys::KeyProblem, SigningKey};

const PRINCIPAL: &str = "alice@contoso.com";

fn id(n: u8) -> ObjectId {
    ObjectId::parse(&format!("00000000-0000-0000-0000-0000000000{n:02x}")).unwrap()
}

fn plan_bytes(signer: &str, created_at: DateTime<Utc>, expires_at: DateTime<Utc>) -> Vec<u8> {
    let changes = vec![
        Change {
            action: Action::Add,
            user_id: id(3),
            upn: "carol@contoso.com".into(),
            mail: Some("carol@contoso.com".into()),
            display_name: Some("Carol".into()),
            source_line: Some(2),
            reason: "on the list, not in the group".into(),
            flags: vec![],
        },
        Change {
            action: Action::Remove,
            user_id: id(2),
            upn: "dave@contoso.com".into(),
            mail: None,
            display_name: Some("Dave".into()),
            source_line: None,
            reason: "in the group, not on the list".into(),
            flags: vec![],
        },
    ];
    let plan = Plan {
        format: plan::FORMAT_NAME.into(),
        format_version: plan::FORMAT_VERSION.into(),
        plan_id: uuid::Uuid::from_u128(0x1234),
        created_at,
        expires_at,
        signer: signer.into(),
        tool_version: writeback::tool_version(),
        tenant_id: Some("11111111-1111-1111-1111-111111111111".into()),
        entra_actor: None,
        groups: vec![GroupPlan {
            group_id: id(1),
            display_name: Some("All staff".into()),
            options: PlanOptions::default(),
            inputs: vec![],
            precondition: Precondition::from_members(&[id(2)]),
            counts: Counts::tally(&changes, &[]),
            changes,
            not_acted_on: vec![],
        }],
    };
    plan::encode(&plan, plan::PlanFormat::Json)
}

/// A plan that is current: made an hour ago, expiring in a week.
fn current_plan(signer: &str) -> Vec<u8> {
    let now = Utc::now();
    let created = Utc.timestamp_opt(now.timestamp() - 3600, 0).unwrap();
    plan_bytes(signer, created, created + Duration::days(7))
}

fn writeback() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_writeback"));
    cmd.env_remove("WRITEBACK_ALLOWED_SIGNERS")
        .env_remove("WRITEBACK_KEY_PASSPHRASE")
        .env_remove("WRITEBACK_CONFIG")
        .stdin(Stdio::null());
    support::isolate(&mut cmd);
    cmd
}

/// `ssh-keygen -t TYPE -N PASS -C COMMENT -f DIR/NAME`; returns the key path.
fn ssh_keygen(dir: &Path, name: &str, key_type: &str, passphrase: &str) -> PathBuf {
    let path = dir.join(name);
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", key_type, "-N", passphrase, "-C", PRINCIPAL, "-f"])
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success());
    path
}

fn public_line(key: &Path) -> String {
    let text = std::fs::read_to_string(format!("{}.pub", key.display())).unwrap();
    let mut parts = text.split_whitespace();
    format!("{} {}", parts.next().unwrap(), parts.next().unwrap())
}

fn ssh_sign(key: &Path, namespace: &str, file: &Path) -> PathBuf {
    let _ = std::fs::remove_file(format!("{}.sig", file.display()));
    let out = Command::new("ssh-keygen").args(["-Y", "sign", "-f"]).arg(key).args(["-n", namespace]).arg(file).output();
    let out = out.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(format!("{}.sig", file.display()))
}

struct Setup {
    dir: tempfile::TempDir,
    plan: PathBuf,
    allowed: PathBuf,
    key: PathBuf,
}

/// A plan signed with `ssh-keygen -Y sign` by a key that allowed_signers trusts with `options`.
fn setup(options: &str, plan: Vec<u8>) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let key = ssh_keygen(dir.path(), "id_ed25519", "ed25519", "");
    let allowed = dir.path().join("allowed_signers");
    std::fs::write(&allowed, format!("# planners\n{PRINCIPAL} {options} {}\n", public_line(&key))).unwrap();
    let plan_path = dir.path().join("plan.json");
    std::fs::write(&plan_path, plan).unwrap();
    ssh_sign(&key, "writeback-plan", &plan_path);
    Setup { dir, plan: plan_path, allowed, key }
}

fn verify(s: &Setup) -> Command {
    let mut cmd = writeback();
    cmd.arg("verify").arg(&s.plan).arg("--allowed-signers").arg(&s.allowed);
    cmd
}

#[test]
fn ssh_keygen_signature_verifies_with_writeback() {
    let s = setup("namespaces=\"writeback-plan\"", current_plan(PRINCIPAL));
    let fingerprint = SigningKey::load(&s.key).unwrap().fingerprint();
    verify(&s)
        .assert()
        .success()
        .stdout(predicate::str::contains(PRINCIPAL))
        .stdout(predicate::str::contains(&fingerprint))
        .stdout(predicate::str::contains("00000000-0000-0000-0000-000000001234"))
        .stdout(predicate::str::contains(plan::precondition::sha256_hex(&std::fs::read(&s.plan).unwrap())))
        .stdout(predicate::str::contains("1 to add, 1 to remove"));
}

#[test]
fn writeback_keygen_and_signature_verify_with_ssh_keygen() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("planner");
    let out = writeback().args(["keygen", "--principal", PRINCIPAL, "--out"]).arg(&key).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line = String::from_utf8(out.stdout).unwrap();
    // The default role is planner: the line grants writeback-plan and nothing else.
    assert!(line.starts_with(&format!("{PRINCIPAL} namespaces=\"writeback-plan\" ssh-ed25519 AAAA")), "{line}");
    let allowed = dir.path().join("allowed_signers");
    std::fs::write(&allowed, &line).unwrap();

    let bytes = current_plan(PRINCIPAL);
    let plan_path = dir.path().join("plan.json");
    std::fs::write(&plan_path, &bytes).unwrap();
    let signing = SigningKey::load(&key).unwrap();
    assert_eq!(signing.comment(), PRINCIPAL);
    std::fs::write(dir.path().join("plan.json.sig"), signing.sign(trust::PLAN_NAMESPACE, &bytes).unwrap()).unwrap();

    let out = Command::new("ssh-keygen")
        .args(["-Y", "verify", "-f"])
        .arg(&allowed)
        .args(["-I", PRINCIPAL, "-n", "writeback-plan", "-s"])
        .arg(dir.path().join("plan.json.sig"))
        .stdin(std::fs::File::open(&plan_path).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Good \"writeback-plan\" signature"));

    // And writeback agrees, reading the allowed_signers path from the environment.
    writeback()
        .arg("verify")
        .arg(&plan_path)
        .env("WRITEBACK_ALLOWED_SIGNERS", &allowed)
        .assert()
        .success()
        .stdout(predicate::str::contains(signing.fingerprint()));
}

#[cfg(unix)]
#[test]
fn keygen_modes_overwrite_and_encryption() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    writeback()
        .args(["keygen", "--principal", "bob@contoso.com", "--out"])
        .arg(&key)
        .env("WRITEBACK_KEY_PASSPHRASE", "s3cret pass")
        .assert()
        .success()
        .stderr(predicate::str::contains("encrypted").and(predicate::str::contains("s3cret").not()));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&dir.path().join("k.pub")), 0o644);
    // ssh-keygen opens it with the passphrase, and not without.
    let derive = |pass: &str| Command::new("ssh-keygen").args(["-y", "-P", pass, "-f"]).arg(&key).output().unwrap();
    assert!(derive("s3cret pass").status.success());
    assert!(!derive("wrong").status.success());
    let loaded = SigningKey::load_with(&key, |_| Ok("s3cret pass".into())).unwrap();
    assert_eq!(loaded.comment(), "bob@contoso.com");

    let before = std::fs::read(&key).unwrap();
    writeback().args(["keygen", "--out"]).arg(&key).assert().code(2).stderr(predicate::str::contains("--force"));
    assert_eq!(std::fs::read(&key).unwrap(), before);
    writeback().args(["keygen", "--force", "--principal", "bob", "--out"]).arg(&key).assert().success();
    assert_ne!(std::fs::read(&key).unwrap(), before);
    assert_eq!(mode(&key), 0o600);
    assert!(!std::fs::read_to_string(&key).unwrap().is_empty());
    writeback().args(["keygen", "--principal", "a b", "--out"]).arg(dir.path().join("x")).assert().code(2);
}

#[test]
fn encrypted_ssh_keygen_key_loads_with_its_passphrase() {
    let dir = tempfile::tempdir().unwrap();
    let key = ssh_keygen(dir.path(), "enc", "ed25519", "pass phrase");
    let loaded = SigningKey::load_with(&key, |_| Ok("pass phrase".into())).unwrap();
    assert_eq!(loaded.comment(), PRINCIPAL);
    let wrong = SigningKey::load_with(&key, |_| Ok("nope".into())).unwrap_err();
    assert!(matches!(wrong.problem, KeyProblem::WrongPassphrase), "{wrong}");
    assert!(wrong.to_string().contains("passphrase is wrong"));
    let none = SigningKey::load_with(&key, |_| Err(KeyProblem::PassphraseNeeded)).unwrap_err();
    assert!(none.to_string().contains("WRITEBACK_KEY_PASSPHRASE"), "{none}");
}

#[cfg(unix)]
#[test]
fn key_readable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = ssh_keygen(dir.path(), "k", "ed25519", "");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = SigningKey::load(&key).unwrap_err();
    assert!(err.to_string().contains(&format!("chmod 600 {}", key.display())), "{err}");
}

#[test]
fn non_ed25519_keys_and_signatures_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = ssh_keygen(dir.path(), "ecdsa", "ecdsa", "");
    let err = SigningKey::load(&key).unwrap_err();
    assert!(matches!(err.problem, KeyProblem::NotEd25519(_)), "{err}");

    let s = setup("", current_plan(PRINCIPAL));
    std::fs::copy(&s.plan, s.plan.with_file_name("other.json")).unwrap();
    ssh_sign(&key, "writeback-plan", &s.plan.with_file_name("other.json"));
    let ecdsa_sig = s.plan.with_file_name("other.json.sig");
    verify(&s).arg("--signature").arg(&ecdsa_sig).assert().code(10).stderr(predicate::str::contains("Ed25519"));
}

#[test]
fn untrusted_signer_exits_11() {
    let s = setup("", current_plan(PRINCIPAL));
    let stranger = ssh_keygen(s.dir.path(), "stranger", "ed25519", "");
    ssh_sign(&stranger, "writeback-plan", &s.plan);
    verify(&s).assert().code(11).stderr(predicate::str::contains("is not in"));
}

#[test]
fn plan_signer_field_must_be_a_principal_of_the_key() {
    let s = setup("", current_plan("mallory@contoso.com"));
    verify(&s).assert().code(11).stderr(predicate::str::contains("mallory@contoso.com"));
}

#[test]
fn key_not_allowed_for_plans_exits_11() {
    let s = setup("namespaces=\"writeback-receipt\"", current_plan(PRINCIPAL));
    verify(&s).assert().code(11).stderr(predicate::str::contains("not allowed to sign 'writeback-plan'"));
}

#[test]
fn signature_for_another_namespace_exits_10() {
    let s = setup("", current_plan(PRINCIPAL));
    ssh_sign(&s.key, "file", &s.plan);
    verify(&s).assert().code(10).stderr(predicate::str::contains("namespace 'file'"));
}

#[test]
fn validity_windows_are_checked_now_or_at_the_time_asked_about() {
    let created = Utc.with_ymd_and_hms(2025, 3, 1, 9, 0, 0).unwrap();
    let plan = plan_bytes(PRINCIPAL, created, created + Duration::days(7));
    let then = ["--at", "2025-03-01T09:30:00Z"];
    // The key's window closed after the plan was made: trusted then, not now.
    let s = setup("valid-after=\"20250101Z\",valid-before=\"20250301100000Z\"", plan.clone());
    verify(&s).assert().code(11).stderr(predicate::str::contains("stopped being valid at 2025-03-01T10:00:00Z"));
    verify(&s).args(then).assert().success().stdout(predicate::str::contains("Checked as of 2025-03-01T09:30:00Z"));
    let s = setup("valid-after=\"20250302Z\"", plan.clone());
    verify(&s).args(then).assert().code(11).stderr(predicate::str::contains("starts being valid at 2025-03-02"));
    let s = setup("valid-before=\"20250228Z\"", plan);
    verify(&s).args(then).assert().code(11).stderr(predicate::str::contains("valid-before"));
    verify(&s).args(["--at", "yesterday"]).assert().code(2).stderr(predicate::str::contains("2026-01-15T10:00:00Z"));
}

#[test]
fn keygen_roles_grant_one_namespace_each() {
    let dir = tempfile::tempdir().unwrap();
    for (role, namespace) in
        [("planner", "writeback-plan"), ("approver", "writeback-approval"), ("admin", "writeback-receipt")]
    {
        let key = dir.path().join(role);
        let out = writeback().args(["keygen", "--role", role, "--principal", PRINCIPAL, "--out"]).arg(&key).output();
        let out = out.unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let line = String::from_utf8(out.stdout).unwrap();
        assert!(line.starts_with(&format!("{PRINCIPAL} namespaces=\"{namespace}\" ssh-ed25519 ")), "{line}");
    }
    writeback().args(["keygen", "--role", "root", "--out"]).arg(dir.path().join("x")).assert().code(2);
}

#[test]
fn signature_of_another_file_exits_10() {
    let s = setup("", current_plan(PRINCIPAL));
    let other = s.dir.path().join("other.json");
    std::fs::write(&other, current_plan("bob@contoso.com")).unwrap();
    let sig = ssh_sign(&s.key, "writeback-plan", &other);
    verify(&s).arg("--signature").arg(&sig).assert().code(10).stderr(predicate::str::contains("does not match"));
}

#[test]
fn changed_plan_exits_10() {
    let s = setup("", current_plan(PRINCIPAL));
    let mut bytes = std::fs::read(&s.plan).unwrap();
    let pos = bytes.iter().position(|&b| b == b'1').unwrap();
    bytes[pos] = b'2';
    std::fs::write(&s.plan, bytes).unwrap();
    verify(&s).assert().code(10);
}

#[test]
fn truncated_garbage_and_missing_signatures_exit_10() {
    let s = setup("", current_plan(PRINCIPAL));
    let sig_path = PathBuf::from(format!("{}.sig", s.plan.display()));
    let sig = std::fs::read_to_string(&sig_path).unwrap();
    std::fs::write(&sig_path, &sig[..sig.len() / 2]).unwrap();
    verify(&s).assert().code(10).stderr(predicate::str::contains("malformed"));
    std::fs::write(&sig_path, "not a signature at all").unwrap();
    verify(&s).assert().code(10).stderr(predicate::str::contains("BEGIN SSH SIGNATURE"));
    std::fs::write(&sig_path, [0xff, 0x00, 0x13]).unwrap();
    verify(&s).assert().code(10);
    std::fs::remove_file(&sig_path).unwrap();
    verify(&s).assert().code(10).stderr(predicate::str::contains("does not exist"));
}

#[test]
fn expired_plan_is_described_then_exits_12() {
    let created = Utc.with_ymd_and_hms(2024, 1, 10, 8, 30, 0).unwrap();
    let s = setup("", plan_bytes(PRINCIPAL, created, created + Duration::days(3)));
    verify(&s)
        .assert()
        .code(12)
        .stdout(predicate::str::contains("EXPIRED"))
        .stdout(predicate::str::contains("2024-01-13T08:30:00Z"))
        .stdout(predicate::str::contains(PRINCIPAL))
        .stdout(predicate::str::contains("00000000-0000-0000-0000-000000001234"))
        .stderr(predicate::str::contains("expired"));
    let out = verify(&s).arg("--json").output().unwrap();
    assert_eq!(out.status.code(), Some(12));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["expired"], true);
    assert_eq!(json["valid"], false);
    assert_eq!(json["principal"], PRINCIPAL);
    assert_eq!(json["adds"], 1);
}

#[test]
fn json_output_for_a_good_plan() {
    let s = setup("", current_plan(PRINCIPAL));
    let out = verify(&s).arg("--json").output().unwrap();
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["valid"], true);
    assert_eq!(json["groups"][0]["display_name"], "All staff");
    assert_eq!(json["removes"], 1);
    assert!(json["fingerprint"].as_str().unwrap().starts_with("SHA256:"));
}

#[test]
fn malformed_and_future_plans_with_good_signatures() {
    let s = setup("", b"{\"format\": \"writeback-plan\", \"format_version\": \"1.0\"}\n".to_vec());
    verify(&s).assert().code(13);
    let future = String::from_utf8(current_plan(PRINCIPAL)).unwrap().replace("\"1.1\"", "\"2.0\"");
    let s = setup("", future.into_bytes());
    verify(&s).assert().code(14).stderr(predicate::str::contains("2.0"));
}

#[test]
fn broken_allowed_signers_names_file_and_line() {
    let s = setup("", current_plan(PRINCIPAL));
    std::fs::write(&s.allowed, "# ok\n\nalice@contoso.com bogus-option ssh-ed25519 AAAA\n").unwrap();
    verify(&s).assert().code(3).stderr(predicate::str::contains(format!("{}:3:", s.allowed.display())));
    writeback().arg("verify").arg(&s.plan).assert().code(2);
}

/// The commands docs/trust.md gives auditors: plain `ssh-keygen`, with the signing time.
#[test]
fn ssh_keygen_and_writeback_agree_on_a_plan_whose_key_has_expired() {
    // The key stopped being valid on 2026-01-01; the plan says it was made the day before and lives until 2099.
    let created = Utc.with_ymd_and_hms(2025, 12, 31, 9, 0, 0).unwrap();
    let expires = Utc.with_ymd_and_hms(2099, 1, 1, 0, 0, 0).unwrap();
    let s = setup("namespaces=\"writeback-plan\",valid-before=\"20260101Z\"", plan_bytes(PRINCIPAL, created, expires));
    let stock = |extra: &[&str]| {
        Command::new("ssh-keygen")
            .args(["-Y", "verify", "-f"])
            .arg(&s.allowed)
            .args(["-I", PRINCIPAL, "-n", "writeback-plan"])
            .args(extra)
            .arg("-s")
            .arg(format!("{}.sig", s.plan.display()))
            .stdin(std::fs::File::open(&s.plan).unwrap())
            .output()
            .unwrap()
    };
    // Now: both refuse.
    assert!(!stock(&[]).status.success(), "ssh-keygen checks the key at the current time");
    verify(&s).assert().code(11).stderr(predicate::str::contains("stopped being valid at 2026-01-01T00:00:00Z"));
    // As of a moment inside the window: both accept the signature (writeback then refuses the plan's lifetime).
    assert!(stock(&["-O", "verify-time=20251231100000Z"]).status.success());
    verify(&s)
        .args(["--at", "2025-12-31T10:00:00Z"])
        .assert()
        .code(16)
        .stderr(predicate::str::contains("longer than max_plan_lifetime"));
    // And a current key with a believable plan: both accept.
    let s = setup("namespaces=\"writeback-plan\",valid-before=\"20990101Z\"", current_plan(PRINCIPAL));
    assert!(ssh_keygen_verify(&s).status.success());
    verify(&s).assert().success();
}

fn ssh_keygen_verify(s: &Setup) -> std::process::Output {
    Command::new("ssh-keygen")
        .args(["-Y", "verify", "-f"])
        .arg(&s.allowed)
        .args(["-I", PRINCIPAL, "-n", "writeback-plan", "-s"])
        .arg(format!("{}.sig", s.plan.display()))
        .stdin(std::fs::File::open(&s.plan).unwrap())
        .output()
        .unwrap()
}
