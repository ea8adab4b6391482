//! End-to-end tests of `writeback approve` and `writeback export`.

mod support;

use chrono::{Duration, Utc};
use support::*;

const GROUP: &str = "b53a97e9-e214-49f9-9d7e-4e4a23c5c243";

fn exported(dir: &std::path::Path) -> Vec<String> {
    files(dir).into_iter().filter(|f| f.ends_with(".csv") && f.contains(".bulk-") || f.ends_with(".ps1")).collect()
}

#[test]
fn approvals_gate_export_and_approve_is_idempotent() {
    let dir = workspace();
    let d = dir.path();
    sample_plan(d);
    let export = |extra: &[&str]| {
        let mut args = vec!["export", "plan.json", "--config", "writeback.toml", "--to", "entra-bulk-add"];
        args.extend_from_slice(extra);
        writeback(d, &args)
    };
    let refused = export(&["--require-approvals", "1"]);
    assert_eq!(refused.status.code(), Some(15), "{}", text(&refused.stderr));
    assert!(text(&refused.stderr).contains("writeback approve"), "{}", text(&refused.stderr));
    assert!(exported(d).is_empty(), "{:?}", exported(d));

    // The planner cannot approve their own plan.
    let own = writeback(d, &["approve", "plan.json", "--key", "keys/demo-planner", "--config", "writeback.toml"]);
    assert_eq!(own.status.code(), Some(15), "{}", text(&own.stderr));
    // The admin's key is not allowed to approve.
    let admin = writeback(d, &["approve", "plan.json", "--key", "keys/demo-admin", "--config", "writeback.toml"]);
    assert_eq!(admin.status.code(), Some(11), "{}", text(&admin.stderr));

    let approve =
        || writeback(d, &["approve", "plan.json", "--key", "keys/demo-approver", "--config", "writeback.toml"]);
    let first = approve();
    assert!(first.status.success(), "{}", text(&first.stderr));
    let file = d.join("plan.json.approval-approver@contoso.example.sig");
    let bytes = std::fs::read(&file).unwrap();
    assert!(bytes.starts_with(b"-----BEGIN SSH SIGNATURE-----"));
    let again = approve();
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(text(&again.stdout).contains("already holds your approval"), "{}", text(&again.stdout));
    assert_eq!(std::fs::read(&file).unwrap(), bytes);

    // ssh-keygen agrees that the approval is the approver's signature over the plan.
    let check = std::process::Command::new("ssh-keygen")
        .args(["-Y", "verify", "-f", "keys/allowed_signers", "-I", "approver@contoso.example"])
        .args(["-n", "writeback-approval", "-s", "plan.json.approval-approver@contoso.example.sig"])
        .current_dir(d)
        .stdin(std::fs::File::open(d.join("plan.json")).unwrap())
        .output()
        .unwrap();
    assert!(check.status.success(), "{}{}", text(&check.stdout), text(&check.stderr));

    let ok = export(&["--require-approvals", "1"]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert!(text(&ok.stdout).contains("1 valid approval (1 required)"), "{}", text(&ok.stdout));
    // Two are needed, and the sample tenant has one approver.
    std::fs::remove_file(d.join(format!("plan.{GROUP}.bulk-add.csv"))).unwrap();
    let config = std::fs::read_to_string(d.join("writeback.toml")).unwrap();
    std::fs::write(d.join("writeback.toml"), config.replace("[defaults]", "[defaults]\nrequire_approvals = 2"))
        .unwrap();
    let two = export(&[]);
    assert_eq!(two.status.code(), Some(15));
    let message = text(&two.stderr);
    assert!(message.contains("needs 2 approvals") && message.contains("approver@contoso.example"), "{message}");
    assert!(!d.join(format!("plan.{GROUP}.bulk-add.csv")).exists());

    // show lists the approval.
    let show = writeback(d, &["show", "plan.json", "--config", "writeback.toml"]);
    assert!(text(&show.stdout).contains("Approvals\n  approver@contoso.example  SHA256:"), "{}", text(&show.stdout));
}

#[test]
fn approve_refuses_to_overwrite_another_approval_silently() {
    let dir = workspace();
    let d = dir.path();
    sample_plan(d);
    std::fs::write(d.join("plan.json.approval-approver@contoso.example.sig"), "something else").unwrap();
    let run = writeback(d, &["approve", "plan.json", "--key", "keys/demo-approver", "--config", "writeback.toml"]);
    assert_eq!(run.status.code(), Some(3), "{}", text(&run.stderr));
    assert!(text(&run.stderr).contains("--force"));
    let forced =
        writeback(d, &["approve", "plan.json", "--key", "keys/demo-approver", "--config", "writeback.toml", "--force"]);
    assert!(forced.status.success(), "{}", text(&forced.stderr));
}

#[test]
fn bulk_csv_and_powershell_content() {
    let dir = workspace();
    let d = dir.path();
    sample_plan(d);
    let plan: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("plan.json")).unwrap()).unwrap();
    let group = &plan["groups"][0];
    let ids = |action: &str| -> Vec<String> {
        group["changes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["action"] == action)
            .map(|c| c["user_id"].as_str().unwrap().to_string())
            .collect()
    };
    let run = writeback(
        d,
        &["export", "plan.json", "--config", "writeback.toml", "--to", "entra-bulk-add", "--out-dir", "out"],
    );
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(text(&run.stdout).contains(&format!("Wrote out/plan.{GROUP}.bulk-add.csv")), "{}", text(&run.stdout));
    let csv = std::fs::read_to_string(d.join(format!("out/plan.{GROUP}.bulk-add.csv"))).unwrap();
    let mut expected = "Member object ID or user principal name [memberObjectIdOrUpn] Required\r\n".to_string();
    for id in ids("add") {
        expected.push_str(&id);
        expected.push_str("\r\n");
    }
    assert_eq!(csv, expected);

    let run = writeback(
        d,
        &["export", "plan.json", "--config", "writeback.toml", "--to", "entra-bulk-remove", "--version-row"],
    );
    assert!(run.status.success(), "{}", text(&run.stderr));
    let csv = std::fs::read_to_string(d.join(format!("plan.{GROUP}.bulk-remove.csv"))).unwrap();
    let lines: Vec<&str> = csv.split_terminator("\r\n").collect();
    assert_eq!(lines[0], "version:v1.0");
    assert_eq!(lines[1], "Member object ID or user principal name [memberObjectIdOrUpn] Required");
    assert_eq!(lines[2..].to_vec(), ids("remove"));

    let run = writeback(d, &["export", "plan.json", "--config", "writeback.toml", "--to", "powershell"]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let script = std::fs::read_to_string(d.join("plan.ps1")).unwrap();
    let sha = writeback::plan::precondition::sha256_hex(&std::fs::read(d.join("plan.json")).unwrap());
    assert!(script.contains(&format!("# Plan id:      {}", plan["plan_id"].as_str().unwrap())));
    assert!(script.contains(&format!("# Plan SHA-256: {sha}")));
    assert!(script.contains("Connect-MgGraph -Scopes GroupMember.ReadWrite.All"));
    for id in ids("add") {
        assert_eq!(script.matches(&format!("-GroupId $GroupId -UserId '{id}' }}")).count(), 1, "{id}");
    }
    for id in ids("remove") {
        let line = script.lines().find(|l| l.contains(&format!("'{id}'"))).unwrap();
        assert!(line.contains("Remove-PlanMember"), "{line}");
    }
}

#[test]
fn a_group_with_no_changes_of_the_kind_writes_no_file() {
    let keys = keys();
    let d = keys.dir.path();
    signed_plan(d, "adds.json", &keys.planner, "planner@contoso.example", 3, 0, Utc::now());
    let run =
        writeback(d, &["export", "adds.json", "--allowed-signers", "allowed_signers", "--to", "entra-bulk-remove"]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(text(&run.stdout).contains("no removes in the plan, so no bulk-remove file"), "{}", text(&run.stdout));
    assert!(text(&run.stdout).contains("Nothing written"));
    assert!(exported(d).is_empty());
}

#[test]
fn splits_at_forty_thousand_rows() {
    let keys = keys();
    let d = keys.dir.path();
    signed_plan(d, "big.json", &keys.planner, "planner@contoso.example", 40_001, 0, Utc::now());
    let run = writeback(d, &["export", "big.json", "--allowed-signers", "allowed_signers", "--to", "entra-bulk-add"]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let part1 = std::fs::read_to_string(d.join(format!("big.{GROUP}.bulk-add-part1.csv"))).unwrap();
    let part2 = std::fs::read_to_string(d.join(format!("big.{GROUP}.bulk-add-part2.csv"))).unwrap();
    assert_eq!(part1.split_terminator("\r\n").count(), 40_001, "header + 40,000 rows");
    assert_eq!(part2.split_terminator("\r\n").count(), 2, "header + 1 row");
    assert!(part2.starts_with("Member object ID or user principal name"));
    assert!(!d.join(format!("big.{GROUP}.bulk-add.csv")).exists());
}

#[test]
fn tampered_expired_and_unapproved_plans_write_nothing() {
    let keys = keys();
    let d = keys.dir.path();
    let export = |plan: &str, extra: &[&str]| {
        let mut args = vec!["export", plan, "--allowed-signers", "allowed_signers", "--to", "powershell"];
        args.extend_from_slice(extra);
        writeback(d, &args)
    };
    let path = signed_plan(d, "tampered.json", &keys.planner, "planner@contoso.example", 2, 1, Utc::now());
    let text_plan = std::fs::read_to_string(&path).unwrap().replacen("User 0", "User O", 1);
    std::fs::write(&path, text_plan).unwrap();
    assert_eq!(export("tampered.json", &[]).status.code(), Some(10));

    signed_plan(d, "old.json", &keys.planner, "planner@contoso.example", 2, 1, Utc::now() - Duration::days(30));
    let old = export("old.json", &[]);
    assert_eq!(old.status.code(), Some(12), "{}", text(&old.stderr));
    let approve_old = writeback(d, &["approve", "old.json", "--key", "alice", "--allowed-signers", "allowed_signers"]);
    assert_eq!(approve_old.status.code(), Some(12), "approve refuses an expired plan");

    // Signed by a key the allowed_signers file lists only for approvals.
    signed_plan(d, "rogue.json", &keys.approvers[0], "alice@contoso.example", 2, 1, Utc::now());
    assert_eq!(export("rogue.json", &[]).status.code(), Some(11));
    let approve_rogue =
        writeback(d, &["approve", "rogue.json", "--key", "bob", "--allowed-signers", "allowed_signers"]);
    assert_eq!(approve_rogue.status.code(), Some(11));

    signed_plan(d, "good.json", &keys.planner, "planner@contoso.example", 2, 1, Utc::now());
    assert_eq!(export("good.json", &["--require-approvals", "2"]).status.code(), Some(15));
    for who in ["alice", "bob"] {
        let run = writeback(d, &["approve", "good.json", "--key", who, "--allowed-signers", "allowed_signers"]);
        assert!(run.status.success(), "{}", text(&run.stderr));
        if who == "alice" {
            assert_eq!(export("good.json", &["--require-approvals", "2"]).status.code(), Some(15));
        }
    }
    assert_eq!(exported(d), Vec::<String>::new(), "nothing is written by a refused export");
    let ok = export("good.json", &["--require-approvals", "2"]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    let script = std::fs::read_to_string(d.join("good.ps1")).unwrap();
    assert!(
        script.contains("# Approved by:  alice@contoso.example")
            && script.contains("# Approved by:  bob@contoso.example")
    );
    // The approvals are for these bytes only: a changed plan loses them with its signature.
    assert_eq!(exported(d), vec!["good.ps1".to_string()]);
}
