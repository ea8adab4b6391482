//! Exactly once, across folders (issue 8 §5): the ledger refuses a finished plan wherever its file sits, a
//! cancelled plan, a started plan with another journal, and a second apply while one runs. Every refusal leaves
//! the fake Graph without a single write.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use chrono::Utc;
use support::fake_graph::{FakeGraph, Seed};
use support::{code, oid, ok, text};
use writeback::identity::ObjectId;
use writeback::plan::{Action, Change, Plan, PlanFormat};
use writeback::trust::SigningKey;

const SIGNER: &str = "planner@contoso.example";
const ADMIN: &str = "admin@contoso.example";

struct Env {
    dir: tempfile::TempDir,
    fake: FakeGraph,
    tenant: String,
    group: String,
    users: Vec<String>,
    key: SigningKey,
    admin_key: PathBuf,
}

/// `n` users; the group holds the first `members` of them. The planner signs plans; the admin key may sign
/// receipts (and so cancel).
fn env(n: u64, members: usize) -> Env {
    let mut seed = Seed::new();
    let users = seed.add_users(n);
    let group = seed.add_group("Staff", &users[..members]);
    let tenant = seed.tenant_id.clone();
    let fake = FakeGraph::start(seed);
    let key = SigningKey::generate(SIGNER).unwrap();
    let admin = SigningKey::generate(ADMIN).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let admin_key = dir.path().join("admin-key");
    std::fs::write(&admin_key, admin.to_openssh_bytes(None).unwrap()).unwrap();
    support::set_private(&admin_key);
    let allowed = format!(
        "{SIGNER} namespaces=\"writeback-plan\" {}\n{ADMIN} namespaces=\"writeback-receipt\" {}\n",
        key.public_key_openssh(),
        admin.public_key_openssh()
    );
    std::fs::write(dir.path().join("allowed_signers"), allowed).unwrap();
    Env { dir, fake, tenant, group, users, key, admin_key }
}

impl Env {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The fake's UPN of a user, as `plan` would have written it.
    fn upn(&self, id: &str) -> String {
        let n = self.users.iter().position(|u| u == id).unwrap() + 1;
        format!("user{n}@contoso.example")
    }

    /// A plan against the fake's current membership of the group.
    fn plan(&self, adds: &[String], removes: &[String]) -> Plan {
        let members: Vec<ObjectId> = self.fake.members(&self.group).iter().map(|m| oid(m)).collect();
        let change = |action, id: &String| Change {
            action,
            user_id: oid(id),
            upn: self.upn(id),
            mail: None,
            display_name: None,
            source_line: None,
            reason: "test".into(),
            flags: vec![],
        };
        let mut changes: Vec<Change> = adds.iter().map(|u| change(Action::Add, u)).collect();
        changes.extend(removes.iter().map(|u| change(Action::Remove, u)));
        let now = Utc::now();
        let (created_at, expires_at) = (now - chrono::Duration::minutes(5), now + chrono::Duration::days(1));
        let plan =
            support::one_group_plan(oid(&self.group), "Staff", &members, changes, SIGNER, created_at, expires_at);
        Plan { tenant_id: Some(self.tenant.clone()), ..plan }
    }

    /// Writes and signs a plan at `rel` (a path under the workspace); returns its path.
    fn write(&self, plan: &Plan, rel: &str) -> PathBuf {
        let bytes = writeback::plan::encode(plan, PlanFormat::Json);
        let sig = self.key.sign("writeback-plan", &bytes).unwrap();
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        std::fs::write(writeback::archive::signature_path(&path), sig).unwrap();
        path
    }

    /// `writeback ARGS…` in the workspace, pointed at the fake, with the workspace's own state folder.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = support::command(self.dir.path());
        // The workspace's own state folder: the default ledger, fresh for each test.
        cmd.env("XDG_STATE_HOME", self.path(".state"));
        cmd.args(args)
            .arg("--allowed-signers")
            .arg(self.path("allowed_signers"))
            .envs(self.fake.env())
            .env("WRITEBACK_RETRY_BASE_MS", "5")
            .env("WRITEBACK_RETRY_MAX_SECONDS", "5")
            .stdin(Stdio::null());
        cmd
    }

    fn apply(&self, plan: &Path, extra: &[&str]) -> Output {
        let plan = plan.to_str().unwrap();
        let mut args = vec!["apply", plan, "--yes"];
        args.extend_from_slice(extra);
        self.command(&args).output().unwrap()
    }

    fn writes(&self) -> usize {
        self.fake.count(|r| r.is_write())
    }
}

#[track_caller]
fn refused(e: &Env, out: &Output, expected: i32, needles: &[&str]) {
    let err = text(&out.stderr);
    assert_eq!(code(out), expected, "stdout:\n{}\nstderr:\n{err}", text(&out.stdout));
    for needle in needles {
        assert!(err.contains(needle), "stderr lacks {needle:?}:\n{err}");
    }
    assert_eq!(e.writes(), 0, "a refused apply sent writes: {:#?}", e.fake.requests());
}

#[test]
fn a_finished_plan_copied_with_its_signature_to_another_folder_is_refused_by_the_ledger() {
    let e = env(10, 5);
    let plan = e.plan(&e.users[5..7], &e.users[0..1]);
    let first = e.write(&plan, "plan.json");
    let out = e.apply(&first, &[]);
    ok(&out);
    // A fresh ledger says so, doctor-style, on the first run.
    assert!(text(&out.stderr).contains("is new or empty"), "{}", text(&out.stderr));
    // Someone puts the removed user back; then the plan, copied with its .sig, is applied from elsewhere.
    e.fake.add_member(&e.group, &e.users[0]);
    let copy = e.path("elsewhere/copied.json");
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    std::fs::copy(&first, &copy).unwrap();
    std::fs::copy(writeback::archive::signature_path(&first), writeback::archive::signature_path(&copy)).unwrap();
    e.fake.clear_requests();
    let out = e.apply(&copy, &[]);
    refused(&e, &out, 22, &["already applied", &plan.plan_id.to_string(), "new plan"]);
    assert!(e.fake.is_member(&e.group, &e.users[0]), "the re-added user stays");
    // The refusal needs no network at all.
    assert_eq!(e.fake.requests().len(), 0);
    // A second run of the original is refused the same way.
    let out = e.apply(&first, &[]);
    refused(&e, &out, 22, &["already applied"]);
}

#[test]
fn a_started_plan_resumes_only_with_its_own_journal() {
    let e = env(10, 5);
    let plan = e.plan(&e.users[5..8], &[]);
    let path = e.write(&plan, "plan.json");
    // The first run passes the gates, starts (its journal and the ledger record it), and is killed while its
    // first write waits at the fake.
    e.fake.hold_writes();
    let mut first = e
        .command(&["apply", path.to_str().unwrap(), "--yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    e.fake.wait_for_held(1);
    first.kill().unwrap();
    first.wait().unwrap();
    let journal = writeback::archive::journal_path(&path);
    assert!(std::fs::read_to_string(&journal).unwrap().contains("apply-started"));
    // A copy elsewhere, with a journal of its own (none), is refused: it must resume with the first journal.
    let copy = e.path("elsewhere/plan.json");
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    std::fs::copy(&path, &copy).unwrap();
    std::fs::copy(writeback::archive::signature_path(&path), writeback::archive::signature_path(&copy)).unwrap();
    e.fake.clear_requests();
    let out = e.apply(&copy, &[]);
    refused(&e, &out, 22, &["resumes only with that journal", "--journal"]);
    // The killed run's write still waits at the fake (it reached Graph, so Graph may carry it out): let it go.
    e.fake.release_requests();
    // With its own journal, the copy resumes and finishes.
    let out = e.apply(&copy, &["--journal", journal.to_str().unwrap()]);
    ok(&out);
    for u in &e.users[5..8] {
        assert!(e.fake.is_member(&e.group, u));
    }
}

#[test]
fn a_cancelled_plan_is_refused_and_the_ledger_lists_it() {
    let e = env(10, 5);
    let plan = e.plan(&e.users[5..7], &[]);
    let path = e.write(&plan, "plan.json");
    let admin_key = e.admin_key.to_str().unwrap().to_string();
    let out =
        e.command(&["cancel", path.to_str().unwrap(), "--key", &admin_key, "--reason", "wrong list"]).output().unwrap();
    ok(&out);
    assert!(text(&out.stdout).contains("Cancelled plan"), "{}", text(&out.stdout));
    let out = e.apply(&path, &[]);
    refused(&e, &out, 28, &["cancelled by admin@contoso.example", "wrong list", "new plan"]);
    // A planner's key may cancel too; a stranger's may not.
    let stranger = SigningKey::generate("stranger@contoso.example").unwrap();
    let stranger_key = e.path("stranger");
    std::fs::write(&stranger_key, stranger.to_openssh_bytes(None).unwrap()).unwrap();
    support::set_private(&stranger_key);
    let other = e.write(&e.plan(&e.users[7..8], &[]), "other.json");
    let out =
        e.command(&["cancel", other.to_str().unwrap(), "--key", stranger_key.to_str().unwrap()]).output().unwrap();
    assert_eq!(code(&out), 11, "{}", text(&out.stderr));
    // The ledger lists the cancellation, and (after it is applied) the other plan as finished.
    ok(&e.apply(&other, &[]));
    let out = e.command(&["ledger", "--json"]).output().unwrap();
    ok(&out);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entries = listed.as_array().unwrap();
    assert_eq!(entries.len(), 2, "{listed:#}");
    let find = |id: &uuid::Uuid| entries.iter().find(|x| x["plan_id"] == id.to_string()).unwrap().clone();
    assert_eq!(find(&plan.plan_id)["cancellation"]["cancelled_by"], ADMIN);
    assert_eq!(find(&plan.plan_id)["cancellation"]["reason"], "wrong list");
    let other_id = writeback::plan::decode(&std::fs::read(&other).unwrap()).unwrap().plan_id;
    assert_eq!(find(&other_id)["record"]["finished"]["status"], "complete");
    let out = e.command(&["ledger"]).env("COLUMNS", "250").output().unwrap();
    ok(&out);
    let table = text(&out.stdout);
    assert!(table.contains("cancelled") && table.contains("finished (complete)"), "{table}");
}

#[test]
fn a_second_apply_while_one_runs_is_refused_naming_it_and_a_killed_ones_lock_is_taken_over() {
    let e = env(10, 5);
    let plan = e.plan(&e.users[5..7], &[]);
    let path = e.write(&plan, "plan.json");
    // The first apply takes the lock, then waits in its first Graph request.
    e.fake.hold_requests();
    let mut first = e
        .command(&["apply", path.to_str().unwrap(), "--yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    e.fake.wait_for_held(1);
    let second = e.apply(&path, &[]);
    let pid = first.id().to_string();
    refused(&e, &second, 29, &["another apply of plan", &format!("pid {pid}"), "Wait for it to finish"]);
    // The first one is killed while it holds the lock: the system frees the lock, the file still names it.
    first.kill().unwrap();
    first.wait().unwrap();
    e.fake.release_requests();
    let third = e.apply(&path, &[]);
    ok(&third);
    let err = text(&third.stderr);
    assert!(err.contains("took over the lock") && err.contains(&format!("pid {pid}")), "{err}");
    for u in &e.users[5..7] {
        assert!(e.fake.is_member(&e.group, u));
    }
}
