//! End-to-end tests of `writeback check` (against the fake Graph) and `writeback audit` (on an archive built from
//! the samples, then tampered with one file at a time).

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use support::fake_graph::{FakeGraph, Seed};
use support::{samples, text, writeback_with};
use writeback::apply::journal::{Event, Journal};
use writeback::apply::receipt::{JournalAnchor, Receipt, ReceiptInput};
use writeback::apply::{Applier, FinishStatus};
use writeback::apply::{ChangeResult, Outcome, OutcomeCounts};
use writeback::identity::ObjectId;
use writeback::plan::Action;
use writeback::trust::SigningKey;

const CHECK_EXIT_NOT_IN_EFFECT: i32 = 30;
const AUDIT_EXIT_FINDINGS: i32 = 31;

/// A workspace with the samples and the sample plan, and the plan as JSON.
fn workspace() -> (tempfile::TempDir, Value) {
    let dir = support::workspace();
    support::sample_plan(dir.path());
    let plan = serde_json::from_slice(&std::fs::read(dir.path().join("plan.json")).unwrap()).unwrap();
    (dir, plan)
}

fn fake() -> FakeGraph {
    FakeGraph::start(Seed::from_file(samples().join("fake-tenant.json").to_str().unwrap()).unwrap())
}

/// Makes every change of the plan in the fake, as an admin would by hand, except those `skip` names.
fn apply_by_hand(graph: &FakeGraph, plan: &Value, skip: &[&str]) {
    for group in plan["groups"].as_array().unwrap() {
        let gid = group["group_id"].as_str().unwrap();
        for change in group["changes"].as_array().unwrap() {
            let uid = change["user_id"].as_str().unwrap();
            if skip.contains(&uid) {
                continue;
            }
            match change["action"].as_str().unwrap() {
                "add" => assert!(graph.add_member(gid, uid)),
                _ => assert!(graph.remove_member(gid, uid)),
            }
        }
    }
}

fn check(dir: &Path, graph: &FakeGraph, extra: &[&str]) -> Output {
    let mut args = vec!["check", "plan.json", "--allowed-signers", "keys/allowed_signers"];
    args.extend_from_slice(extra);
    let env: Vec<(&str, String)> = graph.env();
    writeback_with(dir, &args, &env)
}

fn first_add(plan: &Value) -> (String, String) {
    let group = &plan["groups"][0];
    let change = group["changes"].as_array().unwrap().iter().find(|c| c["action"] == "add").unwrap();
    (group["group_id"].as_str().unwrap().to_string(), change["user_id"].as_str().unwrap().to_string())
}

#[test]
fn check_all_in_effect_writes_a_signed_manual_receipt() {
    let (dir, plan) = workspace();
    let graph = fake();
    apply_by_hand(&graph, &plan, &[]);
    let run = check(dir.path(), &graph, &["--key", "keys/demo-admin"]);
    assert_eq!(run.status.code(), Some(0), "{}{}", text(&run.stdout), text(&run.stderr));
    let out = text(&run.stdout);
    assert!(out.contains("Result:    all"), "{out}");
    assert!(!out.contains(" NO "), "{out}");
    // Only reads: no write request reached Graph.
    assert_eq!(graph.count(|r| r.is_write()), 0);

    let receipt_path = dir.path().join("plan.json.receipt.json");
    let receipt: Value = serde_json::from_slice(&std::fs::read(&receipt_path).unwrap()).unwrap();
    assert_eq!(receipt["mode"], "manual-verified");
    assert_eq!(receipt["status"], "complete");
    assert!(receipt.get("journal").is_none(), "{receipt}");
    assert_eq!(receipt["applier"]["key_principal"], "admin@contoso.example");

    let verify = Command::new("ssh-keygen")
        .args(["-Y", "verify", "-f", "keys/allowed_signers", "-I", "admin@contoso.example"])
        .args(["-n", "writeback-receipt", "-s", "plan.json.receipt.json.sig"])
        .current_dir(dir.path())
        .stdin(std::fs::File::open(&receipt_path).unwrap())
        .output()
        .expect("ssh-keygen is installed");
    assert!(verify.status.success(), "ssh-keygen: {}{}", text(&verify.stdout), text(&verify.stderr));

    // A second check leaves the receipt alone.
    let before = std::fs::read(&receipt_path).unwrap();
    let again = check(dir.path(), &graph, &["--key", "keys/demo-admin"]);
    assert_eq!(again.status.code(), Some(0));
    assert!(text(&again.stderr).contains("exists already"), "{}", text(&again.stderr));
    assert_eq!(std::fs::read(&receipt_path).unwrap(), before);

    // And the archive of plan, signature and manual receipt adds up.
    let audit = writeback_with(dir.path(), &["audit", ".", "--allowed-signers", "keys/allowed_signers"], &[]);
    assert_eq!(audit.status.code(), Some(0), "{}{}", text(&audit.stdout), text(&audit.stderr));
    assert!(text(&audit.stdout).contains("(manual, verified)"), "{}", text(&audit.stdout));
}

#[test]
fn check_one_change_missing_exits_30_and_writes_no_receipt() {
    let (dir, plan) = workspace();
    let graph = fake();
    let (_, user) = first_add(&plan);
    apply_by_hand(&graph, &plan, &[&user]);
    let run = check(dir.path(), &graph, &["--json"]);
    assert_eq!(run.status.code(), Some(CHECK_EXIT_NOT_IN_EFFECT), "{}", text(&run.stderr));
    let v: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(v["not_in_effect"], 1);
    assert_eq!(v["all_in_effect"], false);
    let missing: Vec<&Value> = v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["changes"].as_array().unwrap())
        .filter(|c| c["in_effect"] == false)
        .collect();
    assert_eq!(missing.len(), 1);
    assert_eq!(missing[0]["user_id"], user.as_str());
    assert!(!dir.path().join("plan.json.receipt.json").exists());

    let plain = check(dir.path(), &graph, &[]);
    assert_eq!(plain.status.code(), Some(CHECK_EXIT_NOT_IN_EFFECT));
    assert!(text(&plain.stdout).contains("1 of"), "{}", text(&plain.stdout));
    assert!(text(&plain.stdout).contains("NO"), "{}", text(&plain.stdout));
}

#[test]
fn check_lists_changes_the_plan_did_not_ask_for() {
    let (dir, plan) = workspace();
    let graph = fake();
    apply_by_hand(&graph, &plan, &[]);
    let group = &plan["groups"][0];
    let gid = group["group_id"].as_str().unwrap();
    // Someone joined: a directory user the plan neither had nor adds. Someone left: a kept member.
    let planned: Vec<&str> =
        group["changes"].as_array().unwrap().iter().map(|c| c["user_id"].as_str().unwrap()).collect();
    let before: Vec<&str> =
        group["precondition"]["member_ids"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
    let seed: Value = serde_json::from_slice(&std::fs::read(samples().join("fake-tenant.json")).unwrap()).unwrap();
    let joiner = seed["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap())
        .find(|id| !planned.contains(id) && !before.contains(id))
        .unwrap();
    let leaver = group["not_acted_on"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "kept")
        .and_then(|s| s["object_id"].as_str())
        .unwrap();
    assert!(graph.add_member(gid, joiner));
    assert!(graph.remove_member(gid, leaver));

    let run = check(dir.path(), &graph, &["--json"]);
    assert_eq!(run.status.code(), Some(0), "every planned change is in effect: {}", text(&run.stderr));
    let v: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(v["unrequested"], 2);
    let listed: BTreeMap<String, String> = v["groups"][0]["unrequested"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u["user_id"].as_str().unwrap().to_string(), u["action"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(listed.get(joiner).map(String::as_str), Some("add"));
    assert_eq!(listed.get(leaver).map(String::as_str), Some("remove"));

    let plain = check(dir.path(), &graph, &["--receipt-out", "other.receipt.json"]);
    let out = text(&plain.stdout);
    assert!(out.contains("did not ask for: 2"), "{out}");
    assert!(out.contains("joined") && out.contains("left"), "{out}");
}

// ---------------------------------------------------------------------------------------------------------
// audit
// ---------------------------------------------------------------------------------------------------------

fn key(dir: &Path, name: &str) -> SigningKey {
    SigningKey::load(&dir.join("keys").join(name)).unwrap()
}

/// An archive folder `archive/` in the workspace: the plan and its signature, an approval, and the journal and
/// signed receipt of an apply (written with the apply module's own types, as `writeback apply` writes them).
fn archive() -> (tempfile::TempDir, PathBuf) {
    let (dir, plan_json) = workspace();
    let archive = dir.path().join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    let plan_path = archive.join("plan.json");
    std::fs::rename(dir.path().join("plan.json"), &plan_path).unwrap();
    std::fs::rename(dir.path().join("plan.json.sig"), archive.join("plan.json.sig")).unwrap();
    let bytes = std::fs::read(&plan_path).unwrap();
    let approval = key(dir.path(), "demo-approver").sign("writeback-approval", &bytes).unwrap();
    std::fs::write(archive.join("plan.json.approval-approver@contoso.example.sig"), approval).unwrap();

    let plan = writeback::plan::decode(&bytes).unwrap();
    let sha = writeback::plan::precondition::sha256_hex(&bytes);
    let admin = key(dir.path(), "demo-admin");
    let applier = Applier {
        os_user: Some("it-admin".into()),
        key_principal: Some("admin@contoso.example".into()),
        key_fingerprint: Some(admin.fingerprint()),
        tool_version: writeback::tool_version(),
    };
    let now = writeback::plan::timestamp::parse(plan_json["created_at"].as_str().unwrap()).unwrap()
        + chrono::Duration::hours(1);
    let journal_path = archive.join("plan.json.journal.jsonl");
    let mut journal = Journal::open(&journal_path, now).unwrap().journal;
    journal
        .append(
            now,
            Event::ApplyStarted {
                plan_id: plan.plan_id,
                plan_sha256: sha.clone(),
                tenant_id: None,
                applier: applier.clone(),
                entra_actor: None,
                resume: false,
                pending: 0,
            },
        )
        .unwrap();
    let mut outcomes: BTreeMap<(ObjectId, ObjectId), ChangeResult> = BTreeMap::new();
    for (i, (g, c)) in plan.groups.iter().flat_map(|g| g.changes.iter().map(move |c| (g, c))).enumerate() {
        // One change failed, one was not needed: the counts are not all in one column.
        let outcome = match (i, c.action) {
            (0, _) => Outcome::Failed,
            (1, Action::Add) => Outcome::AlreadyMember,
            _ => Outcome::Applied,
        };
        let result = ChangeResult {
            group_id: g.group_id.clone(),
            user_id: c.user_id.clone(),
            action: c.action,
            outcome,
            detail: None,
            error: None,
        };
        journal
            .append(now, Event::ChangeOutcome { plan_id: plan.plan_id, result: result.clone(), request: None })
            .unwrap();
        outcomes.insert((g.group_id.clone(), c.user_id.clone()), result);
    }
    let counts = OutcomeCounts::tally(outcomes.values().map(|r| &r.outcome));
    journal.append(now, Event::ApplyFinished { plan_id: plan.plan_id, status: FinishStatus::Partial, counts }).unwrap();
    journal.sync().unwrap();
    let receipt = Receipt::build(ReceiptInput {
        plan: &plan,
        plan_sha256: &sha,
        plan_file: "plan.json".into(),
        tenant_id: None,
        applier,
        entra_actor: None,
        started_at: now,
        finished_at: now,
        runs: 1,
        outcomes: &outcomes,
        journal: JournalAnchor {
            path: journal_path.display().to_string(),
            head: journal.head().to_string(),
            seq: journal.seq(),
        },
    })
    .unwrap();
    write_signed_receipt(&archive.join("plan.json.receipt.json"), &receipt, &admin);
    (dir, archive)
}

fn write_signed_receipt(path: &Path, receipt: &Receipt, key: &SigningKey) {
    let bytes = receipt.encode();
    std::fs::write(path, &bytes).unwrap();
    let mut sig_path = path.as_os_str().to_owned();
    sig_path.push(".sig");
    std::fs::write(sig_path, key.sign("writeback-receipt", &bytes).unwrap()).unwrap();
}

fn audit(dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["audit", "archive", "--allowed-signers", "keys/allowed_signers"];
    args.extend_from_slice(extra);
    writeback_with(dir, &args, &[])
}

/// Runs audit, expects exit 31, and returns the findings' lines.
fn findings(dir: &Path) -> String {
    let run = audit(dir, &[]);
    let out = text(&run.stdout);
    assert_eq!(run.status.code(), Some(AUDIT_EXIT_FINDINGS), "{out}{}", text(&run.stderr));
    out.split("Findings:").nth(1).unwrap_or_default().to_string()
}

#[test]
fn a_clean_archive_passes_with_a_table_json_and_csv() {
    let (dir, _) = archive();
    let run = audit(dir.path(), &["--csv", "audit.csv"]);
    let out = text(&run.stdout);
    assert_eq!(run.status.code(), Some(0), "{out}{}", text(&run.stderr));
    for expected in ["plan.json", "planner@contoso.example", "approver@contoso.example", "admin@contoso.example"] {
        assert!(out.contains(expected), "{expected} missing from:\n{out}");
    }
    assert!(out.contains("Findings: none"), "{out}");

    let csv = std::fs::read_to_string(dir.path().join("audit.csv")).unwrap();
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let header = reader.headers().unwrap().clone();
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 1, "{csv}");
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    assert_eq!(&rows[0][col("record")], "plan");
    assert_eq!(&rows[0][col("failed")], "1");
    assert_eq!(&rows[0][col("skipped")], "1");
    assert_eq!(&rows[0][col("approvers")], "approver@contoso.example");

    let json = audit(dir.path(), &["--json"]);
    assert_eq!(json.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["plans"][0]["applied_by"], "admin@contoso.example");
    assert_eq!(v["plans"][0]["failed"], 1);
    assert_eq!(v["findings"].as_array().unwrap().len(), 0);
    assert_eq!(v["files"]["journals"], 1);
}

#[test]
fn a_changed_plan_is_found() {
    let (dir, archive) = archive();
    let path = archive.join("plan.json");
    let changed = std::fs::read_to_string(&path).unwrap().replacen("\"reason\": \"", "\"reason\": \"x", 1);
    std::fs::write(&path, changed).unwrap();
    let f = findings(dir.path());
    assert!(f.contains("plan.json: the plan's signature (plan.json.sig) does not check out"), "{f}");
    assert!(f.contains("plan.json.approval-approver@contoso.example.sig: the approval does not match"), "{f}");
    assert!(f.contains("plan.json.receipt.json: the receipt names plan"), "{f}");
}

#[test]
fn a_plan_signed_by_a_key_not_allowed_for_plans_is_found() {
    let (dir, archive) = archive();
    let bytes = std::fs::read(archive.join("plan.json")).unwrap();
    let sig = key(dir.path(), "demo-approver").sign("writeback-plan", &bytes).unwrap();
    std::fs::write(archive.join("plan.json.sig"), sig).unwrap();
    let f = findings(dir.path());
    assert!(f.contains("plan.json: the plan's signature (plan.json.sig) does not check out"), "{f}");
}

#[test]
fn a_changed_approval_is_found() {
    let (dir, archive) = archive();
    let other = key(dir.path(), "demo-approver").sign("writeback-approval", b"another plan").unwrap();
    std::fs::write(archive.join("plan.json.approval-approver@contoso.example.sig"), other).unwrap();
    let f = findings(dir.path());
    assert!(f.contains("approval-approver@contoso.example.sig: the approval does not match"), "{f}");
}

#[test]
fn an_edited_journal_line_breaks_the_chain_at_the_next_line() {
    let (dir, archive) = archive();
    let path = archive.join("plan.json.journal.jsonl");
    let journal = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = journal.lines().map(str::to_string).collect();
    // Line 3 is the first outcome (failed): claim it was applied.
    lines[2] = lines[2].replace("\"failed\"", "\"applied\"");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let f = findings(dir.path());
    assert!(f.contains("plan.json.journal.jsonl, line 4 (seq 3): the journal chain is broken: prev is"), "{f}");
}

#[test]
fn an_edited_receipt_fails_its_signature() {
    let (dir, archive) = archive();
    let path = archive.join("plan.json.receipt.json");
    let changed = std::fs::read_to_string(&path).unwrap().replacen("\"failed\": 1", "\"failed\": 0", 1);
    std::fs::write(&path, changed).unwrap();
    let f = findings(dir.path());
    assert!(f.contains("plan.json.receipt.json: the receipt's signature"), "{f}");
    assert!(f.contains("disagree"), "{f}");
}

#[test]
fn receipt_re_signed_with_other_counts_or_head_is_found() {
    let (dir, archive) = archive();
    let path = archive.join("plan.json.receipt.json");
    let admin = key(dir.path(), "demo-admin");
    let original = Receipt::decode(&std::fs::read(&path).unwrap()).unwrap();

    let mut counts = original.clone();
    counts.counts.failed = 0;
    counts.counts.applied += 1;
    write_signed_receipt(&path, &counts, &admin);
    let f = findings(dir.path());
    assert!(f.contains("disagree with its journal"), "{f}");
    assert!(!f.contains("signature"), "the signature is good: {f}");

    let mut head = original.clone();
    head.journal.head = format!("sha256:{}", "0".repeat(64));
    write_signed_receipt(&path, &head, &admin);
    let f = findings(dir.path());
    assert!(f.contains("is in no journal of the archive"), "{f}");
}

#[test]
fn a_second_receipt_for_the_same_plan_is_a_replay() {
    let (dir, archive) = archive();
    std::fs::create_dir_all(archive.join("2027")).unwrap();
    for name in ["plan.json.receipt.json", "plan.json.receipt.json.sig"] {
        std::fs::copy(archive.join(name), archive.join("2027").join(name)).unwrap();
    }
    let f = findings(dir.path());
    assert!(f.contains("has another receipt"), "{f}");
    assert!(f.contains("2027/plan.json.receipt.json"), "{f}");
}

#[test]
fn an_archive_made_by_apply_adds_up_and_check_agrees() {
    let (dir, _) = workspace();
    let graph = fake();
    let env = graph.env();
    let apply = writeback_with(
        dir.path(),
        &["apply", "plan.json", "--allowed-signers", "keys/allowed_signers", "--yes", "--key", "keys/demo-admin"],
        &env,
    );
    assert_eq!(apply.status.code(), Some(0), "{}{}", text(&apply.stdout), text(&apply.stderr));
    assert!(dir.path().join("plan.json.journal.jsonl").exists());

    let run = writeback_with(dir.path(), &["audit", ".", "--allowed-signers", "keys/allowed_signers", "--json"], &[]);
    assert_eq!(run.status.code(), Some(0), "{}{}", text(&run.stdout), text(&run.stderr));
    let v: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(v["plans"][0]["applied_by"], "admin@contoso.example");
    assert_eq!(v["plans"][0]["mode"], "apply");
    assert_eq!(v["plans"][0]["failed"], 0);

    // check agrees, and leaves apply's receipt alone.
    let receipt = std::fs::read(dir.path().join("plan.json.receipt.json")).unwrap();
    let checked = check(dir.path(), &graph, &["--key", "keys/demo-admin"]);
    assert_eq!(checked.status.code(), Some(0), "{}{}", text(&checked.stdout), text(&checked.stderr));
    assert_eq!(std::fs::read(dir.path().join("plan.json.receipt.json")).unwrap(), receipt);

    // A second receipt for the same plan (a check written elsewhere) is a replay finding.
    let again = check(dir.path(), &graph, &["--key", "keys/demo-admin", "--receipt-out", "manual.receipt.json"]);
    assert_eq!(again.status.code(), Some(0));
    let run = writeback_with(dir.path(), &["audit", ".", "--allowed-signers", "keys/allowed_signers"], &[]);
    assert_eq!(run.status.code(), Some(AUDIT_EXIT_FINDINGS), "{}", text(&run.stdout));
    assert!(text(&run.stdout).contains("has another receipt"), "{}", text(&run.stdout));
}
