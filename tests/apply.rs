//! End-to-end tests of `writeback apply`: the real binary against the stateful fake Graph.
//!
//! Every successful run ends with the fake's membership equal to the plan's target, and with the receipt and
//! the journal accounting for every change exactly once. Every refusal leaves the fake without a single write.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use support::fake_graph::{Config as FakeConfig, FakeGraph, Faults, RetryAfter, Seed};
use support::{code, oid, ok, text};
use writeback::apply::journal::{self, PlanProgress};
use writeback::apply::receipt::Receipt;
use writeback::apply::Outcome;
use writeback::identity::ObjectId;
use writeback::plan::{Action, Change, Counts, Plan, PlanFormat, Precondition};

use writeback::trust::SigningKey;

const SIGNER: &str = "planner@contoso.example";

struct Env {
    dir: tempfile::TempDir,
    fake: FakeGraph,
    tenant: String,
    group: String,
    users: Vec<String>,
    key: SigningKey,
}

/// `n` users; the group holds the first `members` of them.
fn env(n: u64, members: usize, cfg: FakeConfig) -> Env {
    let mut seed = Seed::new();
    let users = seed.add_users(n);
    let group = seed.add_group("Staff", &users[..members]);
    let tenant = seed.tenant_id.clone();
    let fake = FakeGraph::start_with(seed, cfg);
    let key = SigningKey::generate(SIGNER).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let allowed = format!("{SIGNER} namespaces=\"writeback-plan\" {}\n", key.public_key_openssh());
    std::fs::write(dir.path().join("allowed_signers"), allowed).unwrap();
    Env { dir, fake, tenant, group, users, key }
}

fn change(action: Action, id: &str) -> Change {
    Change {
        action,
        user_id: oid(id),
        // The fake's UPN for `guid(1, n)` is `user{n}@contoso.example`, as `plan` would have written it.
        upn: format!("user{}@contoso.example", u64::from_str_radix(&id[24..], 16).expect("a fake user id")),
        mail: None,
        display_name: None,
        source_line: None,
        reason: "test".into(),
        flags: vec![],
    }
}

impl Env {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A plan against the fake's current membership of the group.
    fn plan(&self, adds: &[String], removes: &[String]) -> Plan {
        let members: Vec<ObjectId> = self.fake.members(&self.group).iter().map(|m| oid(m)).collect();
        let mut changes: Vec<Change> = adds.iter().map(|u| change(Action::Add, u)).collect();
        changes.extend(removes.iter().map(|u| change(Action::Remove, u)));
        let now = Utc::now();
        let (created_at, expires_at) = (now - chrono::Duration::minutes(5), now + chrono::Duration::days(1));
        let plan =
            support::one_group_plan(oid(&self.group), "Staff", &members, changes, SIGNER, created_at, expires_at);
        Plan { tenant_id: Some(self.tenant.clone()), ..plan }
    }

    /// Writes and signs a plan; returns its path.
    fn write(&self, plan: &Plan, name: &str) -> PathBuf {
        let bytes = writeback::plan::encode(plan, PlanFormat::Json);
        let sig = self.key.sign("writeback-plan", &bytes).unwrap();
        let path = self.path(name);
        std::fs::write(&path, &bytes).unwrap();
        std::fs::write(self.path(&format!("{name}.sig")), sig).unwrap();
        path
    }

    fn command(&self, plan: &Path, extra: &[&str]) -> Command {
        let mut cmd = support::command(self.dir.path());
        cmd.arg("apply")
            .arg(plan)
            .arg("--allowed-signers")
            .arg(self.path("allowed_signers"))
            .args(extra)
            .envs(self.fake.env())
            .env("WRITEBACK_RETRY_BASE_MS", "5")
            .env("WRITEBACK_RETRY_MAX_SECONDS", "5")
            .stdin(Stdio::null());
        cmd
    }

    fn apply(&self, plan: &Path, extra: &[&str]) -> Output {
        self.command(plan, extra).output().unwrap()
    }

    fn writes(&self) -> usize {
        self.fake.count(|r| r.is_write())
    }

    fn members(&self) -> BTreeSet<String> {
        self.fake.members(&self.group).into_iter().collect()
    }

    /// The plan's target membership.
    fn target(plan: &Plan) -> BTreeSet<String> {
        plan.groups[0].target_members().iter().map(|m| m.to_string()).collect()
    }

    /// Checks the receipt and the journal: every change exactly once, the chain intact, the receipt anchored to
    /// the journal's head. Returns the outcomes by user.
    fn accounted(&self, plan: &Plan, plan_path: &Path) -> BTreeMap<String, Outcome> {
        let receipt_path = PathBuf::from(format!("{}.receipt.json", plan_path.display()));
        let receipt = Receipt::decode(&std::fs::read(&receipt_path).unwrap()).unwrap();
        assert_eq!(receipt.plan_id, plan.plan_id);
        let changes = &plan.groups[0].changes;
        assert_eq!(receipt.counts.total(), changes.len() as u64);
        let mut by_user = BTreeMap::new();
        for c in &receipt.groups[0].changes {
            assert!(by_user.insert(c.user_id.to_string(), c.outcome).is_none(), "{} twice in the receipt", c.user_id);
            if c.outcome == Outcome::Failed {
                assert!(c.error.is_some(), "a failure carries Graph's error");
            }
        }
        let journal_path = PathBuf::from(format!("{}.journal.jsonl", plan_path.display()));
        let chain = journal::verify_chain(&std::fs::read(&journal_path).unwrap()).unwrap();
        assert!(chain.torn_tail.is_none());
        assert_eq!(chain.head, receipt.journal.head);
        assert_eq!(chain.seq, receipt.journal.seq);
        let progress = PlanProgress::of(&chain, plan.plan_id).unwrap();
        assert!(progress.finished.is_some());
        assert_eq!(progress.outcomes.len(), changes.len());
        for ((_, user), result) in &progress.outcomes {
            assert_eq!(by_user.get(&user.to_string()), Some(&result.outcome), "journal and receipt agree on {user}");
        }
        self.fake.assert_no_misuse();
        by_user
    }
}

fn slice(users: &[String], range: std::ops::Range<usize>) -> Vec<String> {
    users[range].to_vec()
}

/// Runs `cmd` with its first write held at the fake until `act` has run, so `act` lands after every read of the
/// gates and before any write (no sleeping, no timing).
fn before_first_write(e: &Env, mut cmd: Command, act: impl FnOnce(&FakeGraph)) -> Output {
    e.fake.hold_writes();
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    e.fake.wait_for_held(1);
    act(&e.fake);
    e.fake.release_requests();
    child.wait_with_output().unwrap()
}

#[test]
fn happy_path_at_the_floor_then_replay_is_refused_with_zero_writes() {
    let e = env(120, 50, FakeConfig::default());
    let plan = e.plan(&slice(&e.users, 50..95), &slice(&e.users, 0..10));
    let path = e.write(&plan, "plan.json");
    let out = e.apply(&path, &["--yes"]);
    ok(&out);
    assert_eq!(e.members(), Env::target(&plan));
    let outcomes = e.accounted(&plan, &path);
    assert!(outcomes.values().all(|o| *o == Outcome::Applied));
    // The 45 adds read by id (3 sub-requests of 15, one $batch); 45 adds = 3 PATCHes, 10 removes = 10
    // DELETEs: 13 items, one $batch.
    assert_eq!(e.fake.count(|r| r.is_batch()), 2);
    assert_eq!(e.writes(), 13);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("complete"), "{stdout}");
    assert!(stdout.contains("Receipt"), "{stdout}");
    assert!(stdout.contains("55 written, 0 already settled (no write needed), 0 retried, 0 failed"), "{stdout}");

    let before = e.writes();
    let again = e.apply(&path, &["--yes"]);
    assert_eq!(code(&again), 22, "{}", text(&again.stderr));
    assert!(text(&again.stderr).contains("already applied"));
    assert_eq!(e.writes(), before);

    // Killed after the journal was sealed but before the receipt landed: the rerun writes the receipt from the
    // journal and sends nothing.
    let receipt_path = e.path("plan.json.receipt.json");
    let original = std::fs::read(&receipt_path).unwrap();
    std::fs::remove_file(&receipt_path).unwrap();
    let rebuilt = e.apply(&path, &["--yes"]);
    ok(&rebuilt);
    assert!(text(&rebuilt.stderr).contains("receipt was missing"), "{}", text(&rebuilt.stderr));
    assert_eq!(std::fs::read(&receipt_path).unwrap(), original);
    assert_eq!(e.writes(), before);
}

#[test]
fn json_prints_the_receipt_and_key_signs_it() {
    let e = env(30, 10, FakeConfig::default());
    let plan = e.plan(&slice(&e.users, 10..15), &slice(&e.users, 0..1));
    let path = e.write(&plan, "plan.json");
    let admin = SigningKey::generate("admin@contoso.example").unwrap();
    let key_path = e.path("admin-key");
    std::fs::write(&key_path, admin.to_openssh_bytes(None).unwrap()).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let out = e.apply(&path, &["--yes", "--json", "--key", key_path.to_str().unwrap()]);
    ok(&out);
    let printed = Receipt::decode(&out.stdout).unwrap();
    let receipt_path = e.path("plan.json.receipt.json");
    let bytes = std::fs::read(&receipt_path).unwrap();
    assert_eq!(printed, Receipt::decode(&bytes).unwrap());
    assert_eq!(printed.applier.key_fingerprint.as_deref(), Some(admin.fingerprint().as_str()));
    let sig = std::fs::read(e.path("plan.json.receipt.json.sig")).unwrap();
    let sig = writeback::trust::SshSignature::parse(&sig).unwrap();
    sig.verify("writeback-receipt", &bytes).unwrap();
    assert_eq!(sig.fingerprint(), admin.fingerprint());
    e.accounted(&plan, &path);
}

fn faulty(faults: Faults) -> FakeConfig {
    FakeConfig { faults, ..FakeConfig::default() }
}

/// A run through faults: 65 adds (4 PATCHes) and 25 removes, target reached, everything accounted.
fn through_faults(e: &Env, extra: &[&str]) -> BTreeMap<String, Outcome> {
    let plan = e.plan(&slice(&e.users, 40..105), &slice(&e.users, 0..25));
    let path = e.write(&plan, "plan.json");
    let mut args = vec!["--yes", "--max-removal-percent", "100"];
    args.extend_from_slice(extra);
    let out = e.apply(&path, &args);
    ok(&out);
    assert_eq!(e.members(), Env::target(&plan));
    e.accounted(&plan, &path)
}

#[test]
fn throttled_items_with_retry_after_seconds() {
    let e = env(
        120,
        40,
        faulty(Faults { throttle_every: Some(4), retry_after: RetryAfter::Seconds(0.05), ..Faults::default() }),
    );
    let outcomes = through_faults(&e, &[]);
    assert!(outcomes.values().all(|o| *o == Outcome::Applied));
    assert!(e.fake.count(|r| r.status == 429) > 0, "the fault fired");
}

#[test]
fn throttled_items_with_retry_after_http_date() {
    let e = env(
        120,
        40,
        faulty(Faults { throttle_every: Some(13), retry_after: RetryAfter::HttpDate(1), ..Faults::default() }),
    );
    let outcomes = through_faults(&e, &[]);
    assert!(outcomes.values().all(|o| *o == Outcome::Applied));
    assert!(e.fake.count(|r| r.status == 429) > 0, "the fault fired");
}

#[test]
fn bursts_of_503() {
    let e = env(
        120,
        40,
        faulty(Faults {
            server_errors: vec![503, 503, 503, 500, 503],
            server_error_retry_after: true,
            ..Faults::default()
        }),
    );
    through_faults(&e, &[]);
    assert_eq!(e.fake.count(|r| r.status == 503), 4, "the 503s fired");
    assert_eq!(e.fake.count(|r| r.status == 500), 1, "the 500 fired");
    assert!(e.fake.faults().server_errors.is_empty());
}

/// The key of a write, the same whether read from a `$batch` item's record or from a `$batch` body.
fn write_key(method: &str, url: &str, body: Option<&serde_json::Value>) -> String {
    let url = url.find("/groups/").map_or(url, |i| &url[i..]);
    format!("{method} {url} {}", body.map(|b| b.to_string()).unwrap_or_default())
}

fn seconds(retry_after: &str) -> Duration {
    Duration::from_secs_f64(retry_after.trim().parse::<f64>().expect("Retry-After in seconds"))
}

/// Checks, from the fake's log, that no write was sent again before a `Retry-After` it had been given ended: a
/// `$batch` item's own, or one given to the whole `$batch` that carried it. (A Retry-After in an answer that
/// was lost with its connection never reached writeback, so it does not count.)
fn assert_no_resend_before_retry_after(fake: &FakeGraph) -> usize {
    let log = fake.requests();
    let batches: BTreeMap<u64, &support::fake_graph::Recorded> =
        log.iter().filter(|r| r.is_batch()).map(|r| (r.seq, r)).collect();
    let mut sends: Vec<(String, Instant)> = Vec::new();
    let mut holds: Vec<(String, Instant, Instant)> = Vec::new();
    for item in log.iter().filter(|r| r.is_write()) {
        let Some((batch_seq, _)) = &item.batch_item else { continue };
        let batch = batches[batch_seq];
        let key = write_key(&item.method, &item.path, item.body.as_ref());
        sends.push((key.clone(), batch.arrived));
        if let (Some(after), true) = (&item.retry_after, batch.status != 0) {
            holds.push((key, batch.arrived, batch.arrived + seconds(after)));
        }
    }
    for batch in batches.values() {
        let (Some(after), true) = (&batch.retry_after, batch.status != 0) else { continue };
        let requests = batch.body.as_ref().and_then(|b| b["requests"].as_array().cloned()).unwrap_or_default();
        for r in &requests {
            let key = write_key(r["method"].as_str().unwrap(), r["url"].as_str().unwrap(), r.get("body"));
            holds.push((key, batch.arrived, batch.arrived + seconds(after)));
        }
    }
    for (key, answered, until) in &holds {
        for (_, at) in sends.iter().filter(|(k, t)| k == key && t > answered) {
            assert!(at >= until, "{key} was sent again {:?} before its Retry-After ended", *until - *at);
        }
    }
    holds.len()
}

#[test]
fn a_resend_waits_for_every_retry_after_under_combined_faults() {
    // The writes meet a dropped connection, then two 503s on the whole $batch with Retry-After 0.3 s (more than
    // a client that gives up on a request after 0.5 s would wait for), and 429s with Retry-After 0.3 s on items.
    let e = env(120, 40, FakeConfig::default());
    let plan = e.plan(&slice(&e.users, 40..105), &slice(&e.users, 0..25));
    let path = e.write(&plan, "plan.json");
    let mut cmd = e.command(&path, &["--yes", "--concurrency", "1", "--max-removal-percent", "100"]);
    cmd.env("WRITEBACK_RETRY_MAX_SECONDS", "0.5");
    // The faults start after the gates' reads (the members, then the adds read by id), so they meet the writes.
    let out = before_first_write(&e, cmd, |f| {
        f.update_faults(|x| {
            x.drop_before = 1;
            x.server_errors = vec![503, 503];
            x.server_error_retry_after = true;
            x.retry_after = RetryAfter::Seconds(0.3);
            x.throttle_every = Some(7);
        })
    });
    ok(&out);
    assert_eq!(e.members(), Env::target(&plan));
    let outcomes = e.accounted(&plan, &path);
    assert!(outcomes.values().all(|o| *o == Outcome::Applied));
    assert!(e.fake.count(|r| r.is_batch() && r.status == 0) >= 1, "the dropped connection fired");
    assert_eq!(e.fake.count(|r| r.is_batch() && r.status == 503), 2, "the 503s fired");
    assert!(e.fake.count(|r| r.is_write() && r.status == 429) >= 1, "the 429s fired");
    assert!(assert_no_resend_before_retry_after(&e.fake) >= 3);
    assert_journal_names_each_request(&e, &plan, &path);
}

/// Every change written through Graph has, in the journal, the `client-request-id` of a `$batch` writeback sent
/// and a `request-id` the fake gave, and the time.
fn assert_journal_names_each_request(e: &Env, plan: &Plan, plan_path: &Path) {
    let log = e.fake.requests();
    let sent: BTreeSet<String> =
        log.iter().filter(|r| r.is_batch()).filter_map(|r| r.header("client-request-id").map(str::to_string)).collect();
    let given: BTreeSet<String> = log.iter().map(|r| r.request_id.clone()).collect();
    let journal_path = PathBuf::from(format!("{}.journal.jsonl", plan_path.display()));
    let chain = journal::verify_chain(&std::fs::read(&journal_path).unwrap()).unwrap();
    let mut written = 0;
    for entry in &chain.entries {
        let journal::Event::ChangeOutcome { plan_id, request, .. } = &entry.event else { continue };
        assert_eq!(*plan_id, plan.plan_id);
        let request = request.as_ref().expect("a change written through Graph names its request");
        assert!(sent.contains(&request.client_request_id), "{request:?}");
        assert!(request.request_id.as_ref().is_some_and(|id| given.contains(id)), "{request:?}");
        assert!(request.at <= entry.ts && entry.ts - request.at < chrono::Duration::seconds(5));
        written += 1;
    }
    assert_eq!(written, plan.groups[0].changes.len());
}

#[test]
fn dropped_connections_before_and_after_the_work() {
    // drop_after: the fake carries out a $batch and then hangs up; the resend finds the work done.
    let e = env(120, 40, faulty(Faults { drop_before: 1, ..Faults::default() }));
    let plan = e.plan(&slice(&e.users, 40..105), &slice(&e.users, 0..25));
    let path = e.write(&plan, "plan.json");
    let cmd = e.command(&path, &["--yes", "--concurrency", "1", "--max-removal-percent", "100"]);
    let out = before_first_write(&e, cmd, |f| f.update_faults(|x| x.drop_after = 1));
    ok(&out);
    assert_eq!(e.members(), Env::target(&plan));
    let outcomes = e.accounted(&plan, &path);
    assert!(e.fake.count(|r| r.status == 0) >= 2, "both faults fired");
    // Whatever the lost answer carried was found done on the resend: never a failure.
    assert!(outcomes.values().all(|o| o.is_success()));
}

#[test]
fn a_batch_without_an_answer_in_time_is_sent_again() {
    let e = env(80, 20, FakeConfig::default());
    let plan = e.plan(&slice(&e.users, 20..50), &slice(&e.users, 0..5));
    let path = e.write(&plan, "plan.json");
    let mut cmd = e.command(&path, &["--yes", "--request-timeout", "0.3", "--max-removal-percent", "100"]);
    // The fake holds the first $batch of writes unanswered; writeback gives up on it after 0.3 s and sends its
    // items again. Once the resend has arrived, both are let through.
    e.fake.hold_writes();
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    e.fake.wait_for_held(2);
    e.fake.release_requests();
    let out = child.wait_with_output().unwrap();
    ok(&out);
    assert_eq!(e.members(), Env::target(&plan));
    let outcomes = e.accounted(&plan, &path);
    assert!(outcomes.values().all(|o| o.is_success()));
    let stdout = text(&out.stdout);
    assert!(!stdout.contains(" 0 retried"), "{stdout}");
}

#[test]
fn mixed_statuses_in_one_batch() {
    // One $batch holding: a PATCH of 20 with one member that joined after the gates read (400 → split), a
    // DELETE of a user that left after the read (404), throttled items (429) and plain successes.
    let e = env(
        120,
        40,
        faulty(Faults { throttle_every: Some(9), retry_after: RetryAfter::Seconds(0.02), ..Faults::default() }),
    );
    let adds = slice(&e.users, 40..80);
    let removes = slice(&e.users, 0..10);
    let plan = e.plan(&adds, &removes);
    let path = e.write(&plan, "plan.json");
    let cmd = e.command(&path, &["--yes", "--max-removal-percent", "100"]);
    let joined = adds[7].clone();
    let left = removes[3].clone();
    let out = before_first_write(&e, cmd, |f| {
        assert!(f.add_member(&e.group, &joined));
        assert!(f.remove_member(&e.group, &left));
    });
    ok(&out);
    assert_eq!(e.members(), Env::target(&plan));
    let outcomes = e.accounted(&plan, &path);
    assert_eq!(outcomes[&joined], Outcome::AlreadyMember);
    assert_eq!(outcomes[&left], Outcome::AlreadyAbsent);
    assert_eq!(outcomes.values().filter(|o| **o == Outcome::Applied).count(), 48);
    assert!(e.fake.count(|r| r.status == 429) > 0);
    assert!(e.fake.count(|r| r.status == 400) >= 2, "the PATCH and the single add of the member");
    assert!(e.fake.count(|r| r.status == 404) >= 1);
}

#[test]
fn drift_is_settled_without_writes_by_default() {
    let e = env(60, 20, FakeConfig::default());
    let adds = slice(&e.users, 20..30);
    let removes = slice(&e.users, 0..4);
    let plan = e.plan(&adds, &removes);
    let path = e.write(&plan, "plan.json");
    // Since planning: one planned add happened, one planned remove happened, one stranger joined.
    e.fake.add_member(&e.group, &adds[0]);
    e.fake.remove_member(&e.group, &removes[0]);
    e.fake.add_member(&e.group, &e.users[59]);
    let out = e.apply(&path, &["--yes"]);
    ok(&out);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("Drift in Staff"), "{stdout}");
    assert!(stdout.contains("2 joined and 1 left"), "{stdout}");
    // The drift list names people by UPN and short id, not bare ids.
    let stranger = format!("+ user60@contoso.example (user60) {}", oid(&e.users[59]).short());
    assert!(stdout.contains(&stranger), "{stdout}");
    let outcomes = e.accounted(&plan, &path);
    assert_eq!(outcomes[&adds[0]], Outcome::AlreadyMember);
    assert_eq!(outcomes[&removes[0]], Outcome::AlreadyAbsent);
    let mut target = Env::target(&plan);
    target.insert(e.users[59].clone());
    assert_eq!(e.members(), target, "the stranger stays: apply only makes the planned changes");
    assert_eq!(e.writes(), 1 + 3, "9 adds in one PATCH, 3 DELETEs");
}

#[test]
fn a_user_deleted_since_planning_is_settled_with_its_own_outcome_and_no_write() {
    let e = env(80, 20, FakeConfig::default());
    let adds = slice(&e.users, 20..45);
    let plan = e.plan(&adds, &slice(&e.users, 0..2));
    let path = e.write(&plan, "plan.json");
    assert!(e.fake.delete_object(&adds[4]));
    assert!(e.fake.is_deleted(&adds[4]));
    let out = e.apply(&path, &["--yes"]);
    ok(&out);
    let outcomes = e.accounted(&plan, &path);
    assert_eq!(outcomes[&adds[4]], Outcome::DeletedSincePlanning);
    assert_eq!(outcomes.values().filter(|o| **o == Outcome::Failed).count(), 0);
    let receipt = Receipt::decode(&std::fs::read(e.path("plan.json.receipt.json")).unwrap()).unwrap();
    assert_eq!(receipt.counts.deleted_since_planning, 1);
    assert_eq!(receipt.failures().count(), 0);
    // The deleted user was never sent: no reference to it in any write.
    let sent: Vec<String> = e.fake.requests().iter().filter(|r| r.is_write()).map(|r| format!("{r:?}")).collect();
    assert!(sent.iter().all(|r| !r.contains(&adds[4])), "{sent:#?}");
    let mut target = Env::target(&plan);
    target.remove(&adds[4]);
    assert_eq!(e.members(), target);
    // The plan is finished: a rerun is a replay.
    assert_eq!(code(&e.apply(&path, &["--yes"])), 22);
}

#[test]
fn a_token_that_expires_mid_apply_is_refreshed() {
    let e = env(200, 60, FakeConfig { token_max_uses: Some(3), ..FakeConfig::default() });
    let plan = e.plan(&slice(&e.users, 60..160), &slice(&e.users, 0..12));
    let path = e.write(&plan, "plan.json");
    let out = e.apply(&path, &["--yes", "--patches-per-batch", "2"]);
    ok(&out);
    assert!(e.fake.tokens_issued() >= 2);
    assert_eq!(e.members(), Env::target(&plan));
    e.accounted(&plan, &path);
}

#[test]
fn kill_9_mid_apply_then_rerun_finishes_without_redoing_anything() {
    let e = env(400, 150, FakeConfig::default());
    let adds = slice(&e.users, 150..350);
    let removes = slice(&e.users, 0..25);
    let plan = e.plan(&adds, &removes);
    let path = e.write(&plan, "plan.json");
    // One PATCH per $batch, one batch at a time: 10 PATCH batches, then DELETEs. The fake answers two batches
    // (one at a time, so both are journaled before the third is sent) and holds the third; then the kill.
    e.fake.hold_writes_after(2);
    let mut child = e.command(&path, &["--yes", "--concurrency", "1", "--patches-per-batch", "1"]).spawn().unwrap();
    let journal_path = e.path("plan.json.journal.jsonl");
    e.fake.wait_for_held(1);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    e.fake.release_requests();
    assert!(!e.path("plan.json.receipt.json").exists());
    let mid = journal::verify_chain(&std::fs::read(&journal_path).unwrap()).unwrap();
    let done = PlanProgress::of(&mid, plan.plan_id).unwrap();
    assert!(done.finished.is_none());
    // The two answered batches (a PATCH of 20 each, with DELETEs beside them) are journaled; the rest is not.
    assert!(done.outcomes.len() >= 40 && done.outcomes.len() < adds.len() + removes.len(), "{}", done.outcomes.len());

    let out = e.apply(&path, &["--yes"]);
    ok(&out);
    assert!(text(&out.stdout).contains("Resuming"), "{}", text(&out.stdout));
    // The changes the first run made are this plan's own, not drift.
    assert!(!text(&out.stdout).contains("Drift in"), "{}", text(&out.stdout));
    assert_eq!(e.members(), Env::target(&plan));
    let outcomes = e.accounted(&plan, &path);
    assert!(outcomes.values().all(|o| o.is_success()));
    let receipt = Receipt::decode(&std::fs::read(e.path("plan.json.receipt.json")).unwrap()).unwrap();
    assert_eq!(receipt.runs, 2);
    // Nothing redone: every user was written successfully at most once.
    let mut successes: BTreeMap<String, usize> = BTreeMap::new();
    for r in e.fake.requests().iter().filter(|r| r.is_write() && (200..300).contains(&r.status)) {
        let users: Vec<String> = match r.method.as_str() {
            "PATCH" => r.body.as_ref().unwrap()["members@odata.bind"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_str().unwrap().rsplit('/').next().unwrap().to_string())
                .collect(),
            _ => vec![r.path_only().split('/').rev().nth(1).unwrap().to_string()],
        };
        for u in users {
            *successes.entry(u).or_default() += 1;
        }
    }
    assert!(successes.values().all(|n| *n == 1), "a change was written twice");
    // And a third run is a replay.
    assert_eq!(code(&e.apply(&path, &["--yes"])), 22);
}

#[test]
fn a_torn_journal_line_is_cut_off_and_the_run_resumes() {
    let e = env(60, 20, FakeConfig::default());
    let plan = e.plan(&slice(&e.users, 20..30), &[]);
    let path = e.write(&plan, "plan.json");
    // An interrupted run: the header, apply-started, then a line cut short by a crash.
    let journal_path = e.path("plan.json.journal.jsonl");
    {
        let opened = journal::Journal::open(&journal_path, Utc::now()).unwrap();
        let mut j = opened.journal;
        j.append(
            Utc::now(),
            journal::Event::ApplyStarted {
                plan_id: plan.plan_id,
                plan_sha256: writeback::plan::precondition::sha256_hex(&std::fs::read(&path).unwrap()),
                tenant_id: Some(e.tenant.clone()),
                applier: writeback::apply::Applier {
                    os_user: None,
                    key_principal: None,
                    key_fingerprint: None,
                    tool_version: "t".into(),
                },
                entra_actor: None,
                resume: false,
                pending: 10,
            },
        )
        .unwrap();
    }
    use std::io::Write;
    std::fs::OpenOptions::new().append(true).open(&journal_path).unwrap().write_all(b"{\"seq\":2,\"ts\":\"20").unwrap();
    let out = e.apply(&path, &["--yes"]);
    ok(&out);
    assert!(text(&out.stderr).contains("incomplete last line"), "{}", text(&out.stderr));
    assert_eq!(e.members(), Env::target(&plan));
    e.accounted(&plan, &path);
}

// ---------------------------------------------------------------------------------------------------------
// Refusals: each with its exit code, and not a single write.
// ---------------------------------------------------------------------------------------------------------

fn refused(e: &Env, path: &Path, extra: &[&str], expected: i32, needle: &str) {
    let out = e.apply(path, extra);
    assert_eq!(code(&out), expected, "stdout:\n{}\nstderr:\n{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stderr).contains(needle), "expected {needle:?} in:\n{}", text(&out.stderr));
    assert_eq!(e.writes(), 0, "a refusal sends no write");
    assert!(!PathBuf::from(format!("{}.receipt.json", path.display())).exists());
}

#[test]
fn tampered_untrusted_and_expired_plans_are_refused() {
    let e = env(40, 10, FakeConfig::default());
    let plan = e.plan(&slice(&e.users, 10..20), &[]);
    let path = e.write(&plan, "plan.json");
    let mut bytes = std::fs::read(&path).unwrap();
    let pos = bytes.iter().position(|b| *b == b'S').unwrap(); // the "Staff" display name
    bytes[pos] = b's';
    let tampered = e.path("tampered.json");
    std::fs::write(&tampered, &bytes).unwrap();
    std::fs::copy(e.path("plan.json.sig"), e.path("tampered.json.sig")).unwrap();
    refused(&e, &tampered, &["--yes"], 10, "tampered.json");

    let stranger = SigningKey::generate(SIGNER).unwrap();
    let bytes = writeback::plan::encode(&plan, PlanFormat::Json);
    std::fs::write(e.path("untrusted.json"), &bytes).unwrap();
    std::fs::write(e.path("untrusted.json.sig"), stranger.sign("writeback-plan", &bytes).unwrap()).unwrap();
    refused(&e, &e.path("untrusted.json"), &["--yes"], 11, "untrusted.json");

    let mut old = e.plan(&slice(&e.users, 10..20), &[]);
    old.created_at = Utc::now() - chrono::Duration::days(9);
    old.expires_at = Utc::now() - chrono::Duration::days(2);
    let expired = e.write(&old, "expired.json");
    refused(&e, &expired, &["--yes"], 12, "expired");
    assert_eq!(e.fake.count(|r| !r.is_token()), 0, "gates 1-3 run before any Graph request");
}

#[test]
fn other_tenant_unmanageable_group_threshold_and_strict_drift_are_refused() {
    let e = env(100, 50, FakeConfig::default());
    let mut other = e.plan(&slice(&e.users, 50..60), &[]);
    other.tenant_id = Some("11111111-2222-4333-8444-555555555555".into());
    let path = e.write(&other, "other.json");
    refused(&e, &path, &["--yes"], 20, "tenant");

    let mut gone = e.plan(&slice(&e.users, 50..60), &[]);
    gone.groups[0].group_id = oid("00000002-0000-4000-8000-0000000000ff");
    let path = e.write(&gone, "gone.json");
    refused(&e, &path, &["--yes"], 21, "no longer exists");

    let many = e.plan(&[], &slice(&e.users, 0..11)); // 11 of 50 = 22% > 20%
    let path = e.write(&many, "many.json");
    refused(&e, &path, &["--yes"], 24, "--max-removal-percent");
    refused(&e, &path, &["--yes", "--max-removal-percent", "30", "--max-removals", "10"], 24, "--max-removals 11");

    let drifted = e.plan(&slice(&e.users, 50..60), &[]);
    let path = e.write(&drifted, "drifted.json");
    e.fake.add_member(&e.group, &e.users[99]);
    refused(&e, &path, &["--yes", "--strict"], 23, "1 joined, 0 left");
    e.fake.remove_member(&e.group, &e.users[99]);

    // Raising the limit explicitly lets the plan through.
    let out = e.apply(&e.path("many.json"), &["--yes", "--max-removal-percent", "25"]);
    ok(&out);
}

#[test]
fn no_terminal_and_no_yes_is_refused_and_dry_run_writes_nothing() {
    let e = env(40, 10, FakeConfig::default());
    let plan = e.plan(&slice(&e.users, 10..35), &slice(&e.users, 0..2));
    let path = e.write(&plan, "plan.json");
    refused(&e, &path, &[], 26, "--yes");
    assert!(!e.path("plan.json.journal.jsonl").exists());

    let out = e.apply(&path, &["--dry-run"]);
    ok(&out);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("Dry run"), "{stdout}");
    assert!(stdout.contains("PATCH"), "{stdout}");
    assert!(stdout.contains("$ref"), "{stdout}");
    assert!(stdout.contains("2 HTTP requests") || stdout.contains("1 HTTP requests"), "{stdout}");
    assert_eq!(e.writes(), 0);
    assert!(!e.path("plan.json.journal.jsonl").exists());
    assert!(!e.path("plan.json.receipt.json").exists());

    let out = e.apply(&path, &["--dry-run", "--json"]);
    ok(&out);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["estimate"]["patches"], 2);
    assert_eq!(doc["estimate"]["deletes"], 2);
    assert_eq!(doc["estimate"]["writes"], 4);
    assert_eq!(e.writes(), 0);
}

#[test]
fn the_two_person_rule_refuses_until_an_approver_signs() {
    let e = env(40, 10, FakeConfig::default());
    let approver = SigningKey::generate("approver@contoso.example").unwrap();
    let mut allowed = std::fs::read_to_string(e.path("allowed_signers")).unwrap();
    allowed.push_str(&format!(
        "approver@contoso.example namespaces=\"writeback-approval\" {}\n",
        approver.public_key_openssh()
    ));
    std::fs::write(e.path("allowed_signers"), allowed).unwrap();
    let plan = e.plan(&slice(&e.users, 10..15), &[]);
    let path = e.write(&plan, "plan.json");

    refused(&e, &path, &["--yes", "--require-approvals", "1"], 15, "needs 1 approval");
    assert_eq!(e.fake.count(|r| !r.is_token()), 0, "the approvals gate runs before any Graph request");

    // The planner cannot approve their own plan.
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(e.path("plan.json.approval-planner.sig"), e.key.sign("writeback-approval", &bytes).unwrap())
        .unwrap();
    refused(&e, &path, &["--yes", "--require-approvals", "1"], 15, "NOT COUNTED");
    std::fs::remove_file(e.path("plan.json.approval-planner.sig")).unwrap();

    std::fs::write(e.path("plan.json.approval-approver.sig"), approver.sign("writeback-approval", &bytes).unwrap())
        .unwrap();
    ok(&e.apply(&path, &["--yes", "--require-approvals", "1"]));
    assert_eq!(e.members(), Env::target(&plan));
}

/// Ctrl-C while a write is in flight: the apply waits for its answer, journals it, says how to resume and exits
/// 130; the rerun sends only what is left.
#[test]
fn ctrl_c_finishes_the_request_in_flight_then_the_rerun_resumes() {
    use std::io::{BufRead, BufReader};
    let e = env(100, 0, FakeConfig::default());
    let adds = slice(&e.users, 0..60);
    let plan = e.plan(&adds, &[]);
    let path = e.write(&plan, "plan.json");
    // One PATCH of 20 per $batch, one $batch at a time: three batches; the first one waits at the fake.
    e.fake.hold_writes();
    let mut child = e
        .command(&path, &["--yes", "--concurrency", "1", "--patches-per-batch", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    e.fake.wait_for_held(1);
    let kill = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    // The apply says it heard the Ctrl-C before the write is let go, so the stop cannot come too late.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines().map(|l| l.unwrap());
    let heard: Vec<String> = lines.by_ref().take_while(|l| !l.starts_with("stopping")).collect();
    e.fake.release_requests();
    let rest: Vec<String> = lines.collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{heard:?} {rest:?}");
    assert!(rest.iter().any(|l| l.contains("interrupted; run the same command to resume")), "{heard:?} {rest:?}");
    // Exactly the batch in flight was written (besides the gates' read of the adds by id, one $batch of GETs),
    // and the journal holds its 20 outcomes.
    assert_eq!(e.fake.count(|r| r.is_batch()), 2);
    assert_eq!(e.members().len(), 20);
    let journal_path = e.path("plan.json.journal.jsonl");
    let chain = journal::verify_chain(&std::fs::read(&journal_path).unwrap()).unwrap();
    let progress = PlanProgress::of(&chain, plan.plan_id).unwrap();
    assert!(progress.finished.is_none());
    assert_eq!(progress.outcomes.len(), 20);
    assert!(!e.path("plan.json.receipt.json").exists());

    // The rerun resumes: it sends the 40 changes left, none of the 20 again, and finishes.
    let first_batch: BTreeSet<String> = e.members();
    e.fake.clear_requests();
    let out = e.apply(&path, &["--yes"]);
    ok(&out);
    assert_eq!(e.members(), Env::target(&plan));
    let outcomes = e.accounted(&plan, &path);
    assert!(outcomes.values().all(|o| o.is_success()));
    for r in e.fake.requests().iter().filter(|r| r.is_write()) {
        let body = r.body.as_ref().map(|b| b.to_string()).unwrap_or_default();
        assert!(!first_batch.iter().any(|u| body.contains(u.as_str())), "a change was sent twice: {body}");
    }
    assert_eq!(e.writes(), 2, "two PATCHes of 20 are left");
}

/// Ctrl-C ends any other command at once, with exit 130: here `check`, while it waits for Graph.
#[test]
fn ctrl_c_ends_other_commands_with_130() {
    let e = env(10, 5, FakeConfig::default());
    let plan = e.plan(&slice(&e.users, 5..7), &[]);
    let path = e.write(&plan, "plan.json");
    e.fake.hold_requests();
    let check = e.command(&path, &[]);
    // The same environment as apply's, for another command.
    let mut args: Vec<std::ffi::OsString> = check.get_args().map(|a| a.to_owned()).collect();
    args[0] = "check".into();
    let child = Command::new(check.get_program())
        .args(args)
        .envs(check.get_envs().filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned()))))
        .current_dir(e.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    e.fake.wait_for_held(1);
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    e.fake.release_requests();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("interrupted"), "{}", text(&out.stderr));
    assert_eq!(e.writes(), 0);
}

#[test]
fn objects_that_are_not_users_repeated_upns_and_renames_are_refused_with_zero_writes() {
    let e = env(40, 10, FakeConfig::default());
    // An add whose id is no user at all (here: an object the directory does not have), labelled with a UPN.
    let mut plan = e.plan(&slice(&e.users, 10..12), &[]);
    let stranger = "00000009-0000-4000-8000-000000000001";
    plan.groups[0].changes.push(change(Action::Add, &e.users[12]));
    plan.groups[0].changes.last_mut().unwrap().user_id = oid(stranger);
    plan.groups[0].counts = Counts::tally(&plan.groups[0].changes, &[]);
    let path = e.write(&plan, "stranger.json");
    let out = e.apply(&path, &["--yes"]);
    assert_eq!(code(&out), 27, "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains(stranger) && text(&out.stderr).contains("not a user"), "{}", text(&out.stderr));
    // Two changes showing the same UPN.
    let mut plan = e.plan(&slice(&e.users, 10..12), &[]);
    let first = plan.groups[0].changes[0].upn.clone();
    plan.groups[0].changes[1].upn = first.to_uppercase();
    let path = e.write(&plan, "twice.json");
    let out = e.apply(&path, &["--yes"]);
    assert_eq!(code(&out), 27, "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("two changes show the UPN"), "{}", text(&out.stderr));
    // A user renamed since planning: refused, then accepted with --accept-renames and recorded in the receipt.
    let mut plan = e.plan(&slice(&e.users, 10..12), &[]);
    plan.groups[0].changes[0].upn = "old-name@contoso.example".into();
    let path = e.write(&plan, "renamed.json");
    let out = e.apply(&path, &["--yes"]);
    assert_eq!(code(&out), 27, "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("old-name@contoso.example is now user11@contoso.example"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(e.writes(), 0, "every refusal before any write");
    let accepted = e.apply(&path, &["--yes", "--accept-renames"]);
    ok(&accepted);
    // The review lists each old → new UPN.
    let review = text(&accepted.stdout);
    assert!(review.contains("old-name@contoso.example → user11@contoso.example"), "{review}");
    let receipt = Receipt::decode(&std::fs::read(e.path("renamed.json.receipt.json")).unwrap()).unwrap();
    assert_eq!(receipt.renames.len(), 1);
    assert_eq!(receipt.renames[0].graph_upn, "user11@contoso.example");
}

#[test]
fn a_plan_for_another_group_is_refused_by_its_name_and_by_the_drift_limit() {
    let e = env(100, 60, FakeConfig::default());
    // A plan made against another group's 50 members, pointed at this group's id.
    let mut plan = e.plan(&slice(&e.users, 60..70), &[]);
    let others: Vec<ObjectId> = e.users[0..10].iter().chain(&e.users[70..100]).map(|u| oid(u)).collect();
    plan.groups[0].precondition = Precondition::from_members(&others);
    plan.groups[0].display_name = Some("All Staff".into());
    let path = e.write(&plan, "named.json");
    let out = e.apply(&path, &["--yes"]);
    assert_eq!(code(&out), 27, "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("Microsoft Graph calls it 'Staff'"), "{}", text(&out.stderr));
    plan.groups[0].display_name = None;
    let path = e.write(&plan, "unnamed.json");
    let out = e.apply(&path, &["--yes"]);
    assert_eq!(code(&out), 23, "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("--accept-drift"), "{}", text(&out.stderr));
    assert_eq!(e.writes(), 0);
    ok(&e.apply(&path, &["--yes", "--accept-drift"]));
}

/// The requests `apply` made to read the objects it will add (`/users` by id) and the adds `/users` did not
/// return (`/directory/deletedItems`): each `$batch` carrying such reads, and each such read sent on its own.
fn object_read_requests(fake: &FakeGraph) -> usize {
    let is_object_read = |path: &str| path.contains("/users?") || path.contains("/directory/deletedItems");
    let requests = fake.requests();
    let batches: BTreeSet<u64> = requests
        .iter()
        .filter(|r| r.method == "GET" && is_object_read(&r.path))
        .filter_map(|r| r.batch_item.as_ref().map(|(batch, _)| *batch))
        .collect();
    let alone = requests.iter().filter(|r| r.batch_item.is_none() && r.method == "GET" && is_object_read(&r.path));
    batches.len() + alone.count()
}

#[test]
fn the_object_reads_stay_within_their_budget() {
    // 400 adds, 25 of them deleted since planning: at most ceil(400/300) + ceil(25/20) + 1 = 5 requests.
    let e = env(420, 10, FakeConfig::default());
    let adds = slice(&e.users, 10..410);
    let plan = e.plan(&adds, &slice(&e.users, 0..1));
    let path = e.write(&plan, "plan.json");
    for user in adds.iter().step_by(16) {
        assert!(e.fake.delete_object(user));
    }
    let out = e.apply(&path, &["--dry-run"]);
    ok(&out);
    let reads = object_read_requests(&e.fake);
    assert!(reads >= 2, "the adds and the deleted items were read: {reads}");
    assert!(reads <= 400usize.div_ceil(300) + 25usize.div_ceil(20) + 1, "{reads} object-read requests");
    let deleted_reads = e.fake.count(|r| r.path.contains("/directory/deletedItems"));
    assert_eq!(deleted_reads, 25, "each add /users did not return is looked up once");
    assert_eq!(e.writes(), 0);
}
