//! End-to-end tests of `writeback plan`, `show` and `verify` on the samples and on generated edge cases.

mod support;

use std::path::Path;
use std::process::Command;

use support::{text, workspace, writeback};

fn plan_json(dir: &Path, out: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["plan", "--config", "writeback.toml", "--out", out];
    args.extend_from_slice(extra);
    let run = writeback(dir, &args);
    assert!(run.status.success(), "plan failed: {}", text(&run.stderr));
    serde_json::from_slice(&std::fs::read(dir.join(out)).unwrap()).unwrap()
}

fn count(group: &serde_json::Value, kind: &str) -> u64 {
    group["counts"]["not_acted_on"][kind].as_u64().unwrap()
}

#[test]
fn samples_plan_verifies_and_covers_every_messy_case() {
    let dir = workspace();
    let plan = plan_json(dir.path(), "plan.json", &[]);
    assert!(dir.path().join("plan.json.sig").exists());
    let groups = plan["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "the sample config maps two groups");
    let all_staff = &groups[0];
    assert_eq!(all_staff["display_name"], "All Staff");
    for kind in ["invalid", "unresolved", "ambiguous", "duplicate", "non_user_member", "kept"] {
        assert!(count(all_staff, kind) >= 1, "the samples should show a {kind} entry");
    }
    let changes = all_staff["changes"].as_array().unwrap();
    let flags: Vec<&str> =
        changes.iter().flat_map(|c| c["flags"].as_array().unwrap().iter().map(|f| f.as_str().unwrap())).collect();
    assert!(flags.contains(&"guest") && flags.contains(&"disabled"), "flags: {flags:?}");
    assert!(changes.iter().any(|c| c["reason"].as_str().unwrap().ends_with("matched by proxy address")));

    let verify = writeback(dir.path(), &["verify", "plan.json", "--allowed-signers", "keys/allowed_signers"]);
    assert!(verify.status.success(), "{}", text(&verify.stderr));
    assert!(text(&verify.stdout).contains("planner@contoso.example"));
}

#[test]
fn ssh_keygen_verifies_a_plan_signed_by_writeback() {
    let dir = workspace();
    plan_json(dir.path(), "plan.json", &[]);
    let plan = std::fs::File::open(dir.path().join("plan.json")).unwrap();
    let status = Command::new("ssh-keygen")
        .args(["-Y", "verify", "-f", "keys/allowed_signers", "-I", "planner@contoso.example", "-n", "writeback-plan"])
        .args(["-s", "plan.json.sig"])
        .current_dir(dir.path())
        .stdin(plan)
        .output()
        .expect("ssh-keygen is installed (.ci/run installs openssh-client)");
    assert!(status.status.success(), "ssh-keygen: {}{}", text(&status.stdout), text(&status.stderr));
}

#[test]
fn csv_plan_carries_the_same_information() {
    let dir = workspace();
    let json = plan_json(dir.path(), "plan.json", &[]);
    let run = writeback(dir.path(), &["plan", "--config", "writeback.toml", "--format", "csv", "--out", "plan.csv"]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let show = |file: &str| {
        let out = writeback(dir.path(), &["show", file, "--allowed-signers", "keys/allowed_signers", "--json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let (a, b) = (show("plan.json"), show("plan.csv"));
    assert_eq!(a["groups"].as_array().unwrap().len(), b["groups"].as_array().unwrap().len());
    for (ga, gb) in a["groups"].as_array().unwrap().iter().zip(b["groups"].as_array().unwrap()) {
        assert_eq!(ga["changes"], gb["changes"]);
        assert_eq!(ga["not_acted_on"], gb["not_acted_on"]);
        assert_eq!(ga["counts"], gb["counts"]);
    }
    assert_eq!(a["groups"][0]["members_sha256"], json["groups"][0]["precondition"]["members_sha256"]);
    let verify = writeback(dir.path(), &["verify", "plan.csv", "--allowed-signers", "keys/allowed_signers"]);
    assert!(verify.status.success(), "{}", text(&verify.stderr));
}

#[test]
fn flags_override_the_config_and_shape_the_diff() {
    let dir = workspace();
    let full = plan_json(dir.path(), "full.json", &["--sync", "all-staff"]);
    let adds_only = plan_json(dir.path(), "adds.json", &["--sync", "all-staff", "--add-only"]);
    let removes_only = plan_json(dir.path(), "removes.json", &["--sync", "all-staff", "--remove-only"]);
    let (f, a, r) = (&full["groups"][0], &adds_only["groups"][0], &removes_only["groups"][0]);
    assert_eq!(full["groups"].as_array().unwrap().len(), 1);
    assert_eq!(a["counts"]["add"], f["counts"]["add"]);
    assert_eq!(a["counts"]["remove"], 0);
    assert_eq!(count(a, "suppressed_remove"), f["counts"]["remove"].as_u64().unwrap());
    assert_eq!(r["counts"]["add"], 0);
    assert_eq!(r["counts"]["remove"], f["counts"]["remove"]);
    assert_eq!(count(r, "suppressed_add"), f["counts"]["add"].as_u64().unwrap());
    assert_eq!(a["options"]["add_only"], true);
}

#[test]
fn plan_from_flags_alone() {
    let dir = workspace();
    let run = writeback(
        dir.path(),
        &[
            "plan",
            "--contacts",
            "politemail-managers.csv",
            "--members",
            "entra-members-managers.csv",
            "--users",
            "entra-users.csv",
            "--group",
            "4215FBAD-0D2A-4FCF-BF8C-01EE7318E9CB",
            "--key",
            "keys/demo-planner",
            "--expires-in",
            "2d",
            "--out",
            "managers.json",
        ],
    );
    assert!(run.status.success(), "{}", text(&run.stderr));
    let plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("managers.json")).unwrap()).unwrap();
    assert_eq!(plan["groups"][0]["group_id"], "4215fbad-0d2a-4fcf-bf8c-01ee7318e9cb");
    assert_eq!(plan["signer"], "planner@contoso.example", "the signer defaults to the key's comment");
    let created = chrono::DateTime::parse_from_rfc3339(plan["created_at"].as_str().unwrap()).unwrap();
    let expires = chrono::DateTime::parse_from_rfc3339(plan["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!(expires - created, chrono::Duration::days(2));
}

#[test]
fn refusals_write_nothing() {
    let dir = workspace();
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (
            vec![
                "--group",
                "All Staff",
                "--contacts",
                "politemail-all-staff.csv",
                "--members",
                "entra-members-all-staff.csv",
            ],
            2,
            "object id",
        ),
        (vec!["--expires-in", "soon"], 2, "--expires-in"),
        (vec!["--sync", "nope"], 2, "no [[sync]] named 'nope'"),
        (vec!["--sync", "all-staff", "--keep", "politemail-managers.csv"], 3, "neither an object id"),
        (vec!["--sync", "all-staff", "--contacts", "missing.csv"], 3, "missing.csv"),
        (vec!["--add-only", "--remove-only"], 2, ""),
    ];
    for (extra, code, needle) in cases {
        let mut args = vec!["plan", "--config", "writeback.toml", "--out", "refused.json"];
        args.extend_from_slice(&extra);
        let run = writeback(dir.path(), &args);
        let stderr = text(&run.stderr);
        assert_eq!(run.status.code(), Some(code), "{extra:?}: {stderr}");
        assert!(stderr.contains(needle), "{extra:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!dir.path().join("refused.json").exists() && !dir.path().join("refused.json.sig").exists());
    }
}

#[test]
fn a_world_readable_key_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = workspace();
    let key = dir.path().join("keys/demo-planner");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = writeback(dir.path(), &["plan", "--config", "writeback.toml", "--out", "p.json"]);
    assert_eq!(run.status.code(), Some(3), "{}", text(&run.stderr));
    assert!(text(&run.stderr).contains("chmod 600"), "{}", text(&run.stderr));
    assert!(!dir.path().join("p.json").exists());
}

#[test]
fn show_reports_tampering_and_expiry_without_hiding_the_plan() {
    let dir = workspace();
    plan_json(dir.path(), "plan.json", &[]);
    let text_review = support::command(dir.path())
        .args(["show", "plan.json", "--allowed-signers", "keys/allowed_signers"])
        .env("COLUMNS", "80")
        .output()
        .unwrap();
    assert!(text_review.status.success());
    let review = text(&text_review.stdout);
    assert!(review.contains("Signature  valid"));
    assert!(review.lines().all(|l| l.chars().count() <= 80), "fits 80 columns");

    // From a folder without writeback.toml (whose allowed_signers default would check it).
    let unchecked = writeback(&dir.path().join("keys"), &["show", "../plan.json"]);
    assert!(text(&unchecked.stdout).contains("not checked"));

    let path = dir.path().join("plan.json");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.windows(9).position(|w| w == b"All Staff").unwrap();
    bytes[at] = b'B';
    std::fs::write(&path, &bytes).unwrap();
    let tampered = writeback(dir.path(), &["show", "plan.json", "--allowed-signers", "keys/allowed_signers"]);
    assert_eq!(tampered.status.code(), Some(10));
    assert!(text(&tampered.stdout).contains("NOT VALID"));
}

#[test]
fn verify_and_show_list_the_approvals() {
    let dir = workspace();
    plan_json(dir.path(), "plan.json", &[]);
    let none = writeback(dir.path(), &["verify", "plan.json", "--config", "writeback.toml"]);
    assert!(none.status.success(), "{}", text(&none.stderr));
    assert!(text(&none.stdout).contains("Approvals\n  none"), "{}", text(&none.stdout));

    let approve =
        writeback(dir.path(), &["approve", "plan.json", "--key", "keys/demo-approver", "--config", "writeback.toml"]);
    assert!(approve.status.success(), "{}", text(&approve.stderr));
    for command in ["verify", "show"] {
        let out = writeback(dir.path(), &[command, "plan.json", "--config", "writeback.toml"]);
        assert!(out.status.success(), "{command}: {}", text(&out.stderr));
        let listed = text(&out.stdout);
        assert!(listed.contains("approver@contoso.example") && listed.contains("valid"), "{command}: {listed}");
    }
    let json = writeback(dir.path(), &["verify", "plan.json", "--config", "writeback.toml", "--json"]);
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value["approvals"]["valid"][0]["principal"], "approver@contoso.example");
}

#[test]
fn resolution_never_guesses_between_mail_and_proxy_and_notes_a_upn_conflict() {
    let dir = workspace();
    let d = dir.path();
    // b holds conflict@ as mail, c as a proxy address: one level, so ambiguous. d holds a@ as mail, but a@ is
    // a's UPN: a wins, with a note naming d.
    let users = "id,userPrincipalName,displayName,mail,userType,accountEnabled,proxyAddresses\n\
        00000000-0000-4000-8000-00000000000a,a@contoso.example,A,a@contoso.example,Member,true,SMTP:a@contoso.example\n\
        00000000-0000-4000-8000-00000000000b,b@contoso.example,B,Conflict@contoso.example,Member,true,SMTP:Conflict@contoso.example\n\
        00000000-0000-4000-8000-00000000000c,c@contoso.example,C,c@contoso.example,Member,true,SMTP:c@contoso.example;smtp:conflict@contoso.example\n\
        00000000-0000-4000-8000-00000000000d,d@contoso.example,D,A@contoso.example,Member,true,SMTP:A@contoso.example\n";
    std::fs::write(d.join("users.csv"), users).unwrap();
    std::fs::write(d.join("contacts.csv"), "Email\nconflict@contoso.example\na@contoso.example\n").unwrap();
    std::fs::write(d.join("members.csv"), "Object ID,User principal name,Display name,Member type\n").unwrap();
    let run = writeback(
        d,
        &[
            "plan",
            "--contacts",
            "contacts.csv",
            "--members",
            "members.csv",
            "--users",
            "users.csv",
            "--group",
            "b53a97e9-e214-49f9-9d7e-4e4a23c5c243",
            "--key",
            "keys/demo-planner",
            "--signer",
            "planner@contoso.example",
            "--out",
            "resolved.json",
        ],
    );
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(text(&run.stderr).contains("another user holds the same address"), "{}", text(&run.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("resolved.json")).unwrap()).unwrap();
    let group = &plan["groups"][0];
    let changes = group["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "only a@ is added: {changes:#?}");
    assert_eq!(changes[0]["upn"], "a@contoso.example");
    let reason = changes[0]["reason"].as_str().unwrap();
    assert!(reason.contains("matched by userPrincipalName; note: "), "{reason}");
    assert!(reason.contains("d@contoso.example (00000000-0000-4000-8000-00000000000d) holds it as mail"), "{reason}");
    let skipped = group["not_acted_on"].as_array().unwrap();
    let ambiguous: Vec<_> = skipped.iter().filter(|s| s["kind"] == "ambiguous").collect();
    assert_eq!(ambiguous.len(), 1, "{skipped:#?}");
    let detail = ambiguous[0]["detail"].as_str().unwrap();
    assert!(detail.contains("b@contoso.example (00000000-0000-4000-8000-00000000000b) by mail"), "{detail}");
    assert!(detail.contains("c@contoso.example (00000000-0000-4000-8000-00000000000c) by proxy address"), "{detail}");
    // The reviewer sees both.
    let shown = writeback(d, &["show", "resolved.json"]);
    let review = text(&shown.stdout);
    assert!(review.contains("NOTE: another user also has this address"), "{review}");
    assert!(review.contains("several matching users"), "{review}");
}

#[test]
fn verify_json_prints_a_result_on_failure_too() {
    let dir = workspace();
    plan_json(dir.path(), "plan.json", &[]);
    let args = ["verify", "plan.json", "--allowed-signers", "keys/allowed_signers", "--json"];
    let good = writeback(dir.path(), &args);
    assert!(good.status.success(), "{}", text(&good.stderr));
    let value: serde_json::Value = serde_json::from_slice(&good.stdout).unwrap();
    assert_eq!(value["valid"], true);

    let path = dir.path().join("plan.json");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.windows(9).position(|w| w == b"All Staff").unwrap();
    bytes[at] = b'B';
    std::fs::write(&path, &bytes).unwrap();
    let tampered = writeback(dir.path(), &args);
    assert_eq!(tampered.status.code(), Some(10));
    let value: serde_json::Value = serde_json::from_slice(&tampered.stdout).expect("a JSON result on stdout");
    assert_eq!(value["valid"], false);
    assert_eq!(value["check"], "signature");
    assert_eq!(value["exit_code"], 10);
    let message = value["message"].as_str().unwrap();
    assert!(message.contains("plan.json") && text(&tampered.stderr).contains(message), "{message}");
}
