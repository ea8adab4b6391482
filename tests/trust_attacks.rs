//! Issue 8, tried as an attacker would: each attack runs the real binary (against the fake Graph where a Graph
//! is involved) and must be refused with its documented exit code, a message that says what was wrong and what
//! to do, and not a single write reaching Graph.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use chrono::{DateTime, Duration, Utc};
use support::fake_graph::{guid, FakeGraph, Seed, SeedObject};
use support::{oid, text};
use writeback::identity::ObjectId;
use writeback::plan::{self, Action, Change, Plan, PlanFormat, Precondition};
use writeback::trust::SigningKey;

const SIGNER: &str = "planner@contoso.example";

/// A fake tenant with one group, a trusted planner key, and a folder to work in.
struct Lab {
    dir: tempfile::TempDir,
    fake: FakeGraph,
    tenant: String,
    group: String,
    users: Vec<String>,
    planner: SigningKey,
}

impl Lab {
    /// Twelve users; the group "Staff" holds the first eight.
    fn new() -> Lab {
        Lab::with_others(Vec::new())
    }

    /// Like [`Lab::new`], the group also holding `others`: directory objects that are not users.
    fn with_others(others: Vec<SeedObject>) -> Lab {
        let mut seed = Seed::new();
        let users = seed.add_users(12);
        let mut members = users[..8].to_vec();
        members.extend(others.iter().map(|o| o.id.clone()));
        seed.directory_objects.extend(others);
        let group = seed.add_group("Staff", &members);
        let tenant = seed.tenant_id.clone();
        let fake = FakeGraph::start(seed);
        let planner = SigningKey::generate(SIGNER).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let lab = Lab { dir, fake, tenant, group, users, planner };
        lab.trust(&format!("{SIGNER} namespaces=\"writeback-plan\" {}\n", lab.planner.public_key_openssh()));
        lab
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Replaces the allowed_signers file.
    fn trust(&self, lines: &str) {
        std::fs::write(self.path("allowed_signers"), lines).unwrap();
    }

    /// Writes `key` (unencrypted, mode 0600) as `name` and returns its path.
    fn key_file(&self, key: &SigningKey, name: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, key.to_openssh_bytes(None).unwrap()).unwrap();
        support::set_private(&path);
        path
    }

    /// A plan against the fake's membership that adds `adds` and removes `removes` (indexes into `users`).
    fn plan_of(&self, adds: &[usize], removes: &[usize], created_at: DateTime<Utc>, lifetime: Duration) -> Plan {
        let members: Vec<ObjectId> = self.fake.members(&self.group).iter().map(|m| oid(m)).collect();
        let mut changes: Vec<Change> = adds.iter().map(|&i| change(Action::Add, &self.users[i])).collect();
        changes.extend(removes.iter().map(|&i| change(Action::Remove, &self.users[i])));
        let expires_at = created_at + lifetime;
        let plan =
            support::one_group_plan(oid(&self.group), "Staff", &members, changes, SIGNER, created_at, expires_at);
        Plan { tenant_id: Some(self.tenant.clone()), ..plan }
    }

    /// A plan made at `created_at` that lives `lifetime`: add the ninth user, remove the first (within the
    /// default removal limits).
    fn plan_made(&self, created_at: DateTime<Utc>, lifetime: Duration) -> Plan {
        self.plan_of(&[8], &[0], created_at, lifetime)
    }

    /// A current plan: made ten minutes ago, valid for a day.
    fn plan(&self) -> Plan {
        self.plan_made(ten_minutes_ago(), Duration::days(1))
    }

    /// Writes the user's own config file (`$XDG_CONFIG_HOME/writeback/writeback.toml`) of the lab's runs.
    fn user_config(&self, text: &str) {
        let path = self.path("xdg-config/writeback/writeback.toml");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// Writes `bytes` as `name` and signs them with the planner key into `name.sig`.
    fn sign_bytes(&self, bytes: &[u8], name: &str) -> PathBuf {
        self.sign_with(&self.planner, bytes, name)
    }

    fn sign_with(&self, key: &SigningKey, bytes: &[u8], name: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, bytes).unwrap();
        std::fs::write(self.path(&format!("{name}.sig")), key.sign("writeback-plan", bytes).unwrap()).unwrap();
        path
    }

    /// The binary in the lab's folder, pointed at the fake, with the user's folders isolated.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = support::command(self.dir.path());
        cmd.args(args)
            .envs(self.fake.env())
            .env("WRITEBACK_RETRY_BASE_MS", "5")
            .env("WRITEBACK_RETRY_MAX_SECONDS", "5")
            .env("XDG_CONFIG_HOME", self.path("xdg-config"))
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// `apply PLAN --allowed-signers allowed_signers --yes` plus `extra`.
    fn apply(&self, plan: &Path, extra: &[&str]) -> Output {
        let mut args = vec!["apply", plan.to_str().unwrap(), "--allowed-signers", "allowed_signers", "--yes"];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    /// Asserts that Graph never saw a write: no PATCH, POST, PUT or DELETE, plain or as an item of a `$batch`
    /// (a `$batch` of reads, such as the users apply looks up by id, is not a write).
    fn assert_no_writes(&self) {
        let writes: Vec<String> =
            self.fake.requests().iter().filter(|r| r.is_write()).map(|r| format!("{} {}", r.method, r.path)).collect();
        assert!(writes.is_empty(), "Graph received writes: {writes:?}");
    }
}

fn ten_minutes_ago() -> DateTime<Utc> {
    chrono::DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap() - Duration::minutes(10)
}

fn change(action: Action, id: &str) -> Change {
    Change {
        action,
        user_id: oid(id),
        // The fake's UPN for `guid(1, n)` is `user{n}@contoso.example`: apply checks the UPN against Graph's.
        upn: format!("user{}@contoso.example", u64::from_str_radix(&id[24..], 16).expect("a fake user id")),
        mail: None,
        display_name: Some(format!("User {id}")),
        source_line: None,
        reason: "test".into(),
        flags: vec![],
    }
}

/// Asserts the exit code and that stderr holds every needle; returns stderr.
fn refused(out: &Output, code: i32, needles: &[&str]) -> String {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stdout:\n{}\nstderr:\n{stderr}", text(&out.stdout));
    for needle in needles {
        assert!(stderr.contains(needle), "missing {needle:?} in stderr:\n{stderr}");
    }
    stderr
}

// ---------------------------------------------------------------------------------------------------------------
// §10 Plans have no hidden content.
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn a_json_plan_with_a_field_no_reviewer_sees_is_refused_with_zero_writes() {
    let lab = Lab::new();
    let text = String::from_utf8(plan::encode(&lab.plan(), PlanFormat::Json)).unwrap();
    let hidden = text.replacen("\"plan_id\"", "\"also_apply_to\": \"Managers\",\n  \"plan_id\"", 1);
    let path = lab.sign_bytes(hidden.as_bytes(), "plan.json");
    let verify = lab.run(&["verify", "plan.json", "--allowed-signers", "allowed_signers"]);
    refused(&verify, 13, &["unknown field 'also_apply_to'", "format 1.1"]);
    let apply = lab.apply(&path, &[]);
    refused(&apply, 13, &["unknown field 'also_apply_to'"]);
    // Deeper inside, too.
    let nested = text.replacen("\"action\"", "\"group_id\": \"x\", \"action\"", 1);
    let path = lab.sign_bytes(nested.as_bytes(), "nested.json");
    refused(&lab.apply(&path, &[]), 13, &["unknown field `group_id`"]);
    lab.assert_no_writes();
}

#[test]
fn a_csv_plan_whose_group_row_is_repeated_is_refused_with_zero_writes() {
    let lab = Lab::new();
    let text = String::from_utf8(plan::encode(&lab.plan(), PlanFormat::Csv)).unwrap();
    // A second `#group,1,display_name` row: today the last one would win, and the review would show it.
    let at = text.find("#group,1,display_name,").unwrap();
    let end = at + text[at..].find("\r\n").unwrap() + 2;
    let twice = format!("{}#group,1,display_name,Newsletter subscribers\r\n{}", &text[..end], &text[end..]);
    let path = lab.sign_bytes(twice.as_bytes(), "plan.csv");
    refused(
        &lab.run(&["show", "plan.csv", "--allowed-signers", "allowed_signers"]),
        13,
        &["'display_name' appears twice"],
    );
    refused(&lab.apply(&path, &[]), 13, &["line", "'display_name' appears twice"]);
    lab.assert_no_writes();
}

#[test]
fn a_plan_of_a_newer_format_asks_for_an_upgrade_with_zero_writes() {
    let lab = Lab::new();
    let text = String::from_utf8(plan::encode(&lab.plan(), PlanFormat::Json)).unwrap();
    let newer = text.replacen("\"format_version\": \"1.1\"", "\"format_version\": \"1.9\"", 1);
    let path = lab.sign_bytes(newer.as_bytes(), "plan.json");
    refused(&lab.apply(&path, &[]), 14, &["1.9", "upgrade writeback"]);
    lab.assert_no_writes();
}

// ---------------------------------------------------------------------------------------------------------------
// §1 No settings from the working directory on the admin side.
// ---------------------------------------------------------------------------------------------------------------

/// The URL a fake's environment gives for `name`.
fn fake_url(fake: &FakeGraph, name: &str) -> String {
    fake.env().into_iter().find(|(k, _)| *k == name).map(|(_, v)| v).unwrap()
}

#[test]
fn a_writeback_toml_beside_the_plan_cannot_send_the_secret_to_a_decoy() {
    let lab = Lab::new();
    let decoy = FakeGraph::start(Seed::new());
    // The admin's own config names the real endpoints; the planner's hand-off folder (also the working folder)
    // holds a writeback.toml that names the decoy's.
    lab.user_config(&format!(
        "[defaults]\ngraph_url = \"{}\"\nlogin_url = \"{}\"\n",
        fake_url(&lab.fake, "WRITEBACK_GRAPH_URL"),
        fake_url(&lab.fake, "WRITEBACK_LOGIN_URL")
    ));
    std::fs::write(
        lab.path("writeback.toml"),
        format!(
            "[defaults]\ngraph_url = \"{}\"\nlogin_url = \"{}\"\n",
            fake_url(&decoy, "WRITEBACK_GRAPH_URL"),
            fake_url(&decoy, "WRITEBACK_LOGIN_URL")
        ),
    )
    .unwrap();
    let path = lab.sign_bytes(&plan::encode(&lab.plan(), PlanFormat::Json), "plan.json");
    for dry_run in [true, false] {
        let mut cmd = lab.command(&["apply", path.to_str().unwrap(), "--allowed-signers", "allowed_signers", "--yes"]);
        if dry_run {
            cmd.arg("--dry-run");
        }
        let out = cmd.env_remove("WRITEBACK_GRAPH_URL").env_remove("WRITEBACK_LOGIN_URL").output().unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{}\n{stderr}", text(&out.stdout));
        assert!(stderr.contains("note: ignoring ./writeback.toml"), "{stderr}");
        assert!(stderr.contains("only `writeback plan` reads a writeback.toml"), "{stderr}");
        assert_eq!(decoy.requests().len(), 0, "the decoy was asked: {:?}", decoy.requests());
    }
    // The real apply went to the real endpoints.
    assert!(lab.fake.is_member(&lab.group, &lab.users[8]));
}

#[test]
fn a_writeback_toml_beside_the_plan_cannot_replace_allowed_signers() {
    let lab = Lab::new();
    lab.user_config(&format!("[defaults]\nallowed_signers = \"{}\"\n", lab.path("allowed_signers").display()));
    let mallory = SigningKey::generate(SIGNER).unwrap();
    std::fs::write(
        lab.path("evil_signers"),
        format!("{SIGNER} namespaces=\"writeback-plan\" {}\n", mallory.public_key_openssh()),
    )
    .unwrap();
    std::fs::write(lab.path("writeback.toml"), "[defaults]\nallowed_signers = \"evil_signers\"\n").unwrap();
    let path = lab.sign_with(&mallory, &plan::encode(&lab.plan(), PlanFormat::Json), "plan.json");
    let verify = lab.run(&["verify", "plan.json"]);
    refused(&verify, 11, &["note: ignoring ./writeback.toml", "is not in", "allowed_signers"]);
    assert!(!text(&verify.stdout).contains("good"), "{}", text(&verify.stdout));
    refused(&lab.run(&["apply", path.to_str().unwrap(), "--yes"]), 11, &["is not in"]);
    lab.assert_no_writes();
}

#[test]
fn a_writeback_toml_beside_the_plan_cannot_raise_the_removal_limits() {
    let lab = Lab::new();
    std::fs::write(lab.path("writeback.toml"), "[defaults]\nmax_removals = 1000\nmax_removal_percent = 100\n").unwrap();
    // Half the group: over the default 20%.
    let plan = lab.plan_of(&[], &[0, 1, 2, 3], ten_minutes_ago(), Duration::days(1));
    let path = lab.sign_bytes(&plan::encode(&plan, PlanFormat::Json), "plan.json");
    refused(&lab.apply(&path, &[]), 24, &["note: ignoring ./writeback.toml", "20"]);
    lab.assert_no_writes();
    // The admin's own config may raise them.
    lab.user_config("[defaults]\nmax_removal_percent = 60\n");
    let out = lab.apply(&path, &["--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    lab.assert_no_writes();
}

#[test]
fn the_note_names_a_writeback_toml_in_the_plans_folder_too() {
    let lab = Lab::new();
    std::fs::create_dir_all(lab.path("handoff")).unwrap();
    std::fs::write(lab.path("handoff/writeback.toml"), "[defaults]\nallowed_signers = \"x\"\n").unwrap();
    lab.sign_bytes(&plan::encode(&lab.plan(), PlanFormat::Json), "handoff/plan.json");
    let out = lab.run(&["verify", "handoff/plan.json", "--allowed-signers", "allowed_signers"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("note: ignoring ./handoff/writeback.toml"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

// ---------------------------------------------------------------------------------------------------------------
// §4 Two people means two people.
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn a_planner_listed_under_an_alias_cannot_approve_their_own_plan() {
    let lab = Lab::new();
    let second = SigningKey::generate(SIGNER).unwrap();
    lab.key_file(&second, "second-key");
    // The planner's key is listed as planner@… and pl@…; a second key of theirs is listed as planner@… for
    // approvals. The plan is signed as pl@…, the approval made as planner@….
    lab.trust(&format!(
        "{SIGNER},pl@contoso.example namespaces=\"writeback-plan\" {}\n{SIGNER} namespaces=\"writeback-approval\" {}\n",
        lab.planner.public_key_openssh(),
        second.public_key_openssh()
    ));
    let mut plan = lab.plan();
    plan.signer = "pl@contoso.example".into();
    let bytes = plan::encode(&plan, PlanFormat::Json);
    let path = lab.sign_bytes(&bytes, "plan.json");

    let approve = lab.run(&["approve", "plan.json", "--key", "second-key", "--allowed-signers", "allowed_signers"]);
    refused(&approve, 15, &["'planner@contoso.example', a name of the plan's signer", "someone else"]);
    assert!(support::files(lab.dir.path()).iter().all(|f| !f.contains(".approval-")));

    // The same approval made by hand still does not count, for apply, export and audit alike.
    std::fs::write(
        lab.path("plan.json.approval-planner@contoso.example.sig"),
        second.sign("writeback-approval", &bytes).unwrap(),
    )
    .unwrap();
    let needles = ["needs 1 approval", "has 0 valid", "NOT COUNTED", "a name of the plan's signer"];
    refused(&lab.apply(&path, &["--require-approvals", "1"]), 15, &needles);
    let export = lab.run(&[
        "export",
        "plan.json",
        "--to",
        "powershell",
        "--require-approvals",
        "1",
        "--allowed-signers",
        "allowed_signers",
    ]);
    refused(&export, 15, &needles);
    let audit = lab.run(&["audit", ".", "--allowed-signers", "allowed_signers", "--json"]);
    assert_eq!(audit.status.code(), Some(31), "{}", text(&audit.stderr));
    let report: serde_json::Value = serde_json::from_slice(&audit.stdout).unwrap();
    assert_eq!(report["plans"][0]["approvers"], serde_json::json!([]), "{report:#}");
    let findings = report["findings"].to_string();
    assert!(findings.contains("approved by the plan's own signer"), "{findings}");
    lab.assert_no_writes();
}

// ---------------------------------------------------------------------------------------------------------------
// §2 Keys are trusted at the time they are used.
// ---------------------------------------------------------------------------------------------------------------

/// `YYYYMMDDHHMMSSZ`, the allowed_signers spelling of a UTC time.
fn ssh_time(t: DateTime<Utc>) -> String {
    t.format("%Y%m%d%H%M%SZ").to_string()
}

#[test]
fn a_plan_signed_before_its_key_was_revoked_is_not_applied_after() {
    let lab = Lab::new();
    let revoked = Utc::now() - Duration::days(1);
    lab.trust(&format!(
        "{SIGNER} namespaces=\"writeback-plan\",valid-before=\"{}\" {}\n",
        ssh_time(revoked),
        lab.planner.public_key_openssh()
    ));
    // The plan says it was made two days ago, when the key was still trusted, and it has not expired.
    let plan = lab.plan_made(ten_minutes_ago() - Duration::days(2), Duration::days(7));
    let path = lab.sign_bytes(&plan::encode(&plan, PlanFormat::Json), "plan.json");
    let needles = ["stopped being valid at", "valid-before at allowed_signers:1", "signed again with a key"];
    refused(&lab.apply(&path, &[]), 11, &needles);
    refused(&lab.apply(&path, &["--dry-run"]), 11, &needles);
    let export = lab.run(&["export", "plan.json", "--to", "powershell", "--allowed-signers", "allowed_signers"]);
    refused(&export, 11, &needles);
    lab.assert_no_writes();
    assert!(!lab.path("plan.ps1").exists() && support::files(lab.dir.path()).iter().all(|f| !f.ends_with(".ps1")));
}

#[test]
fn an_approval_key_is_checked_now_too() {
    let lab = Lab::new();
    let approver = SigningKey::generate("approver@contoso.example").unwrap();
    lab.key_file(&approver, "approver-key");
    lab.trust(&format!(
        "{SIGNER} namespaces=\"writeback-plan\" {}\napprover@contoso.example namespaces=\"writeback-approval\",valid-after=\"{}\" {}\n",
        lab.planner.public_key_openssh(),
        ssh_time(Utc::now() + Duration::days(2)),
        approver.public_key_openssh()
    ));
    lab.sign_bytes(&plan::encode(&lab.plan(), PlanFormat::Json), "plan.json");
    let approve = lab.run(&["approve", "plan.json", "--key", "approver-key", "--allowed-signers", "allowed_signers"]);
    refused(&approve, 11, &["starts being valid at", "valid-after"]);
}

#[test]
fn a_plan_from_the_future_or_that_lives_too_long_is_refused_with_zero_writes() {
    let lab = Lab::new();
    let approver = SigningKey::generate("approver@contoso.example").unwrap();
    lab.key_file(&approver, "approver-key");
    lab.trust(&format!(
        "{SIGNER} namespaces=\"writeback-plan\" {}\napprover@contoso.example namespaces=\"writeback-approval\" {}\n",
        lab.planner.public_key_openssh(),
        approver.public_key_openssh()
    ));
    let future = lab.plan_made(ten_minutes_ago() + Duration::hours(1), Duration::days(1));
    lab.sign_bytes(&plan::encode(&future, PlanFormat::Json), "future.json");
    let long = lab.plan_made(ten_minutes_ago(), Duration::days(60));
    lab.sign_bytes(&plan::encode(&long, PlanFormat::Json), "long.json");
    for (name, needles) in [
        ("future.json", &["minutes after", "from the future", "clock"][..]),
        ("long.json", &["lives 60 days", "longer than max_plan_lifetime (30 days)", "--expires-in"][..]),
    ] {
        let trust = ["--allowed-signers", "allowed_signers"];
        refused(&lab.run(&[&["verify", name][..], &trust].concat()), 16, needles);
        refused(&lab.run(&[&["export", name, "--to", "powershell"][..], &trust].concat()), 16, needles);
        refused(&lab.run(&[&["approve", name, "--key", "approver-key"][..], &trust].concat()), 16, needles);
        refused(&lab.apply(&lab.path(name), &[]), 16, needles);
    }
    lab.assert_no_writes();
    assert!(support::files(lab.dir.path()).iter().all(|f| !f.contains(".approval-") && !f.ends_with(".ps1")));
    // The admin's own config may allow longer lives.
    lab.user_config("[defaults]\nmax_plan_lifetime = \"90d\"\n");
    let out = lab.run(&["verify", "long.json", "--allowed-signers", "allowed_signers"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn plan_refuses_an_expiry_beyond_max_plan_lifetime() {
    let dir = support::workspace();
    let out = support::writeback(
        dir.path(),
        &["plan", "--config", "writeback.toml", "--out", "plan.json", "--expires-in", "45d"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("--expires-in 45d is longer than max_plan_lifetime (30 days)"), "{stderr}");
    assert!(!dir.path().join("plan.json").exists());
}

#[test]
fn audit_judges_each_plan_when_its_signed_receipt_says_it_was_applied_else_now() {
    use writeback::apply::receipt::{JournalAnchor, Receipt, ReceiptInput, ReceiptMode, RECEIPT_NAMESPACE};
    use writeback::apply::{Applier, ChangeResult, Outcome};

    let lab = Lab::new();
    let admin = SigningKey::generate("admin@contoso.example").unwrap();
    let revoked = Utc::now() - Duration::days(1);
    lab.trust(&format!(
        "{SIGNER} namespaces=\"writeback-plan\",valid-before=\"{}\" {}\nadmin@contoso.example namespaces=\"writeback-receipt\" {}\n",
        ssh_time(revoked),
        lab.planner.public_key_openssh(),
        admin.public_key_openssh()
    ));
    let made = ten_minutes_ago() - Duration::days(3);
    let receipt_for = |name: &str, sign: bool| {
        let plan = lab.plan_made(made, Duration::days(7));
        let bytes = plan::encode(&plan, PlanFormat::Json);
        lab.sign_bytes(&bytes, name);
        let outcomes = plan.groups[0]
            .changes
            .iter()
            .map(|c| {
                let key = (plan.groups[0].group_id.clone(), c.user_id.clone());
                let result = ChangeResult {
                    group_id: key.0.clone(),
                    user_id: key.1.clone(),
                    action: c.action,
                    outcome: Outcome::Applied,
                    detail: None,
                    error: None,
                };
                (key, result)
            })
            .collect();
        let mut receipt = Receipt::build(ReceiptInput {
            plan: &plan,
            plan_sha256: &writeback::plan::precondition::sha256_hex(&bytes),
            plan_file: name.into(),
            tenant_id: None,
            applier: Applier {
                os_user: Some("admin".into()),
                key_principal: None,
                key_fingerprint: None,
                tool_version: "t".into(),
            },
            entra_actor: None,
            started_at: made + Duration::days(1),
            finished_at: made + Duration::days(1),
            runs: 0,
            outcomes: &outcomes,
            journal: JournalAnchor::default(),
        })
        .unwrap();
        receipt.mode = ReceiptMode::ManualVerified;
        let encoded = receipt.encode();
        std::fs::write(lab.path(&format!("{name}.receipt.json")), &encoded).unwrap();
        if sign {
            std::fs::write(
                lab.path(&format!("{name}.receipt.json.sig")),
                admin.sign(RECEIPT_NAMESPACE, &encoded).unwrap(),
            )
            .unwrap();
        }
    };
    // Applied (the admin signed the receipt) two days ago, while the key was trusted: fine.
    receipt_for("applied.json", true);
    // Its receipt is not signed, so nothing vouches for when it was applied: judged now.
    receipt_for("unvouched.json", false);
    // Never applied: judged now.
    lab.sign_bytes(&plan::encode(&lab.plan_made(made, Duration::days(7)), PlanFormat::Json), "pending.json");

    let out = lab.run(&["audit", ".", "--allowed-signers", "allowed_signers", "--json"]);
    assert_eq!(out.status.code(), Some(31), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let findings: Vec<String> =
        report["findings"].as_array().unwrap().iter().map(|f| f["text"].as_str().unwrap().to_string()).collect();
    let about =
        |file: &str| findings.iter().filter(|f| f.starts_with(&format!("{file}:"))).cloned().collect::<Vec<_>>();
    assert!(about("applied.json").is_empty(), "{findings:#?}");
    for file in ["pending.json", "unvouched.json"] {
        let found = about(file);
        assert!(
            found.iter().any(|f| f.contains("does not check out now (it has no signed receipt)")
                && f.contains("stopped being valid")),
            "{file}: {findings:#?}"
        );
    }
    let valid: Vec<(String, bool)> = report["plans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["plan_file"].as_str().unwrap().to_string(), p["signature_valid"].as_bool().unwrap()))
        .collect();
    assert!(valid.contains(&("applied.json".into(), true)), "{valid:?}");
    assert!(valid.contains(&("pending.json".into(), false)), "{valid:?}");
    lab.assert_no_writes();
}

// ---------------------------------------------------------------------------------------------------------------
// §6 No silent loss of a plan that was applied. §7 (plan side) The wrong list.
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn plan_out_never_replaces_an_applied_plan_its_inputs_keys_or_signers() {
    let dir = support::workspace();
    let d = dir.path();
    let plan = |out: &str, extra: &[&str]| {
        let mut args = vec!["plan", "--config", "writeback.toml", "--out", out];
        args.extend_from_slice(extra);
        support::writeback(d, &args)
    };
    // The README's first command, twice: a plan nobody acted on is replaced, with its signature.
    for _ in 0..2 {
        let out = plan("plan.json", &[]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
    // Once applied (a receipt beside it), approved or journaled, never, not even with --force.
    let applied = std::fs::read(d.join("plan.json")).unwrap();
    for trail in
        ["plan.json.receipt.json", "plan.json.journal.jsonl", "plan.json.approval-approver@contoso.example.sig"]
    {
        std::fs::write(d.join(trail), "{}").unwrap();
        for extra in [&[][..], &["--force"][..]] {
            let out = plan("plan.json", extra);
            refused(&out, 3, &["plan.json", trail, "a new plan never replaces it", "--out"]);
        }
        std::fs::remove_file(d.join(trail)).unwrap();
    }
    assert_eq!(std::fs::read(d.join("plan.json")).unwrap(), applied);
    // Its own inputs, the config, the key and the allowed_signers file: never.
    for (file, what) in [
        ("politemail-all-staff.csv", "which this plan reads or signs with"),
        ("entra-members-managers.csv", "which this plan reads or signs with"),
        ("keep.txt", "which this plan reads or signs with"),
        ("writeback.toml", "which this plan reads or signs with"),
        ("keys/demo-planner", "which this plan reads or signs with"),
        ("keys/demo-approver", "a private key"),
        ("keys/allowed_signers", "allowed_signers"),
    ] {
        let before = std::fs::read(d.join(file)).unwrap();
        refused(&plan(file, &["--force"]), 3, &[file, what, "even with --force"]);
        assert_eq!(std::fs::read(d.join(file)).unwrap(), before, "{file} was changed");
    }
    // Any other existing file needs --force.
    std::fs::write(d.join("notes.txt"), "mine").unwrap();
    refused(&plan("notes.txt", &[]), 3, &["notes.txt", "not a writeback plan", "--force"]);
    assert_eq!(std::fs::read_to_string(d.join("notes.txt")).unwrap(), "mine");
    assert_eq!(plan("notes.txt", &["--force"]).status.code(), Some(0));
    // Placeholders give each run its own file.
    let out = plan("nightly-{date}-{plan_id}.json", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let made: Vec<String> = support::files(d).into_iter().filter(|f| f.starts_with("nightly-")).collect();
    assert_eq!(made.len(), 2, "{made:?}");
    assert!(!made[0].contains('{'), "{made:?}");
}

#[test]
fn a_receipt_of_another_plan_is_never_taken_for_this_ones() {
    let lab = Lab::new();
    let first = lab.plan();
    let path = lab.sign_bytes(&plan::encode(&first, PlanFormat::Json), "plan.json");
    let out = lab.apply(&path, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let writes = lab.fake.count(|r| r.is_write());
    // A newer plan written over the applied one by hand (plan --out would refuse): its receipt is not this one's.
    let second = lab.plan_of(&[9], &[], ten_minutes_ago(), Duration::days(1));
    lab.sign_bytes(&plan::encode(&second, PlanFormat::Json), "plan.json");
    let needles = ["plan.json.receipt.json", "receipt of another plan", &first.plan_id.to_string(), "Move it"];
    refused(&lab.apply(&path, &[]), 3, &needles);
    refused(&lab.apply(&path, &["--dry-run"]), 3, &needles);
    refused(&lab.run(&["check", "plan.json", "--allowed-signers", "allowed_signers"]), 3, &needles);
    assert_eq!(lab.fake.count(|r| r.is_write()), writes, "no write after the first apply");
    assert!(!lab.fake.is_member(&lab.group, &lab.users[9]));
}

#[test]
fn a_signed_receipt_is_never_replaced_by_an_unsigned_one() {
    let lab = Lab::new();
    let admin = SigningKey::generate("admin@contoso.example").unwrap();
    lab.key_file(&admin, "admin-key");
    let path = lab.sign_bytes(&plan::encode(&lab.plan(), PlanFormat::Json), "plan.json");
    let out = lab.apply(&path, &["--key", "admin-key"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let writes = lab.fake.count(|r| r.is_write());
    // The receipt is lost, its signature is still there: a run without the key must not write an unsigned one.
    std::fs::remove_file(lab.path("plan.json.receipt.json")).unwrap();
    refused(&lab.apply(&path, &[]), 3, &["plan.json.receipt.json.sig", "never replaces a signed receipt", "--key"]);
    assert!(!lab.path("plan.json.receipt.json").exists());
    let out = lab.apply(&path, &["--key", "admin-key"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let bytes = std::fs::read(lab.path("plan.json.receipt.json")).unwrap();
    let sig = writeback::trust::SshSignature::parse(&std::fs::read(lab.path("plan.json.receipt.json.sig")).unwrap());
    sig.unwrap().verify("writeback-receipt", &bytes).unwrap();
    assert_eq!(lab.fake.count(|r| r.is_write()), writes);
}

#[test]
fn a_journal_whose_last_line_lacks_its_line_feed_keeps_that_line() {
    let lab = Lab::new();
    let admin = SigningKey::generate("admin@contoso.example").unwrap();
    lab.key_file(&admin, "admin-key");
    lab.trust(&format!(
        "{SIGNER} namespaces=\"writeback-plan\" {}\nadmin@contoso.example namespaces=\"writeback-receipt\" {}\n",
        lab.planner.public_key_openssh(),
        admin.public_key_openssh()
    ));
    let path = lab.sign_bytes(&plan::encode(&lab.plan(), PlanFormat::Json), "plan.json");
    let out = lab.apply(&path, &["--key", "admin-key"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let journal = lab.path("plan.json.journal.jsonl");
    let mut bytes = std::fs::read(&journal).unwrap();
    assert_eq!(bytes.pop(), Some(b'\n'));
    std::fs::write(&journal, &bytes).unwrap();
    let audit = lab.run(&["audit", ".", "--allowed-signers", "allowed_signers"]);
    assert_eq!(audit.status.code(), Some(0), "{}\n{}", text(&audit.stdout), text(&audit.stderr));
    assert!(text(&audit.stdout).contains("Findings: none"), "{}", text(&audit.stdout));
    // The apply-finished line still counts: the plan is not applied again.
    let writes = lab.fake.count(|r| r.is_write());
    let again = lab.apply(&path, &["--key", "admin-key"]);
    assert_eq!(again.status.code(), Some(22), "{}", text(&again.stderr));
    assert_eq!(lab.fake.count(|r| r.is_write()), writes);
}

#[test]
fn plan_refuses_an_empty_list_and_warns_about_large_removals() {
    let dir = support::workspace();
    let d = dir.path();
    let list = d.join("politemail-all-staff.csv");
    let full = std::fs::read_to_string(&list).unwrap();
    let header = full.lines().next().unwrap().to_string();
    std::fs::write(&list, format!("{header}\n")).unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["plan", "--config", "writeback.toml", "--sync", "all-staff", "--out", "p.json"];
        args.extend_from_slice(extra);
        support::writeback(d, &args)
    };
    refused(&run(&[]), 3, &["politemail-all-staff.csv", "has no contacts", "remove every member", "--allow-empty"]);
    assert!(!d.join("p.json").exists());
    let out = run(&["--allow-empty"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // Two contacts left of about three hundred: the planner is warned, with the group and the figures.
    let mut lines = full.lines();
    std::fs::write(&list, format!("{}\n{}\n{}\n", header, lines.nth(1).unwrap(), lines.next().unwrap())).unwrap();
    std::fs::remove_file(d.join("p.json")).unwrap();
    std::fs::remove_file(d.join("p.json.sig")).unwrap();
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("warning: all-staff: the plan removes")
            && stderr.contains("members of All Staff (b53a97e9-e214-49f9-9d7e-4e4a23c5c243)")
            && stderr.contains("more than max_removal_percent (20%)"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// §9 What reaches a terminal is what the bytes say.
// ---------------------------------------------------------------------------------------------------------------

/// The raw bytes that must never reach a terminal: ESC, BEL, C1 CSI, and the bidi override U+202E.
fn assert_no_raw_controls(label: &str, bytes: &[u8]) {
    let shown = String::from_utf8_lossy(bytes);
    for (needle, name) in [("\u{1b}", "ESC"), ("\u{7}", "BEL"), ("\u{202e}", "U+202E"), ("\u{9b}", "CSI")] {
        assert!(!shown.contains(needle), "{label}: a raw {name} reached the output:\n{shown}");
    }
    assert!(!shown.chars().any(|c| c != '\n' && writeback::terminal::is_unsafe(c)), "{label}:\n{shown}");
}

#[test]
fn hostile_names_in_a_plan_reach_no_terminal_raw() {
    let lab = Lab::new();
    let admin = SigningKey::generate("admin@contoso.example").unwrap();
    lab.key_file(&admin, "admin-key");
    let mut plan = lab.plan();
    let hostile = "bob@contoso.example\u{1b}[31m\u{1b}[1A\u{1b}[2K\u{1b}]0;pwned\u{7}\u{202e}moc.elpmaxe";
    for change in &mut plan.groups[0].changes {
        change.upn = format!("{hostile}-{}", change.user_id);
        change.display_name = Some("Bob \u{1b}[1A\u{1b}[2K\u{202e}evil\u{9b}2J".to_string());
        change.reason = "on the list \u{1b}]8;;http://evil\u{7}".into();
    }
    plan.groups[0].display_name = Some("Staff\u{1b}[2K\u{202e}".into());
    plan.tool_version = "writeback\u{1b}[8m hidden".into();
    let bytes = plan::encode(&plan, PlanFormat::Json);
    let path = lab.sign_bytes(&bytes, "plan.json");
    lab.sign_bytes(&plan::encode(&plan, PlanFormat::Csv), "plan.csv");
    let trust = ["--allowed-signers", "allowed_signers"];
    let runs: Vec<Vec<&str>> = vec![
        vec!["show", "plan.json"],
        vec!["show", "plan.csv"],
        vec!["show", "plan.json", "--json"],
        vec!["verify", "plan.json"],
        vec!["export", "plan.json", "--to", "powershell"],
        vec!["export", "plan.json", "--to", "entra-bulk-add"],
        vec!["check", "plan.json"],
        vec!["report", "plan.json", "--out", "report.html"],
    ];
    for args in runs {
        let out = lab.run(&[&args[..], &trust].concat());
        let label = args.join(" ");
        assert_no_raw_controls(&format!("stdout of {label}"), &out.stdout);
        assert_no_raw_controls(&format!("stderr of {label}"), &out.stderr);
        if args[0] == "show" && args.len() == 2 {
            let stdout = text(&out.stdout);
            assert!(stdout.contains("\\x1b[31m") && stdout.contains("\\u{202e}"), "{stdout}");
        }
    }
    // Graph names the group and the users otherwise, so apply refuses (27); its refusal is escaped too.
    let refused = lab.apply(&path, &["--dry-run"]);
    assert_eq!(refused.status.code(), Some(27), "{}", text(&refused.stderr));
    assert_no_raw_controls("stderr of the refused apply --dry-run", &refused.stderr);
    let apply = lab.apply(&path, &["--dry-run", "--accept-group-rename", "--accept-renames"]);
    assert_eq!(apply.status.code(), Some(0), "{}", text(&apply.stderr));
    assert_no_raw_controls("stdout of apply --dry-run", &apply.stdout);
    assert_no_raw_controls("stderr of apply --dry-run", &apply.stderr);
    let json = lab.run(&["show", "plan.json", "--json", "--allowed-signers", "allowed_signers"]);
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert!(value["groups"][0]["changes"][0]["upn"].as_str().unwrap().starts_with(hostile), "JSON keeps the value");
    let page = std::fs::read(lab.path("report.html")).unwrap();
    assert_no_raw_controls("report.html", &page);
    lab.assert_no_writes();
}

/// A sign-in endpoint that answers every request with `answer(request)` (status 400), on 127.0.0.1. The
/// thread serves until the returned guard is dropped.
struct SignIn {
    url: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SignIn {
    fn start(answer: fn(&str) -> (String, String)) -> SignIn {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                // Read the head, then the body its Content-Length announces.
                let body_start = loop {
                    let Ok(n) = stream.read(&mut buf) else { break None };
                    if n == 0 {
                        break None;
                    }
                    request.extend_from_slice(&buf[..n]);
                    if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                        break Some(at + 4);
                    }
                };
                let Some(body_start) = body_start else { continue };
                let head = String::from_utf8_lossy(&request[..body_start]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
                    .unwrap_or(0);
                while request.len() < body_start + length {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let (content_type, body) = answer(&String::from_utf8_lossy(&request));
                let _ = write!(
                    stream,
                    "HTTP/1.1 400 Bad Request\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        SignIn { url, stop, thread: Some(thread) }
    }
}

impl Drop for SignIn {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(self.url.trim_start_matches("http://"));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn the_sign_in_endpoints_error_shows_its_error_and_description_only() {
    let lab = Lab::new();
    let path = lab.sign_bytes(&plan::encode(&lab.plan(), PlanFormat::Json), "plan.json");
    let secret = fake_url(&lab.fake, "AZURE_CLIENT_SECRET");
    // One endpoint echoes the request (with the secret) as plain text; another puts it, with escapes, in a long
    // error_description.
    let plain = SignIn::start(|request| ("text/plain".into(), request.replace("\r\n", " | ")));
    let json = SignIn::start(|request| {
        let description =
            format!("AADSTS7000215: Invalid client secret \u{1b}[2K\u{202e}{} {}", "x".repeat(400), request);
        (
            "application/json".into(),
            serde_json::json!({"error": "invalid_client", "error_description": description}).to_string(),
        )
    });
    for endpoint in [&plain, &json] {
        let out = lab
            .command(&["apply", path.to_str().unwrap(), "--allowed-signers", "allowed_signers", "--yes"])
            .env("WRITEBACK_LOGIN_URL", &endpoint.url)
            .output()
            .unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{stderr}");
        assert!(!stderr.contains(&secret) && !stderr.contains("client_secret"), "the request was echoed: {stderr}");
        assert_no_raw_controls("stderr", &out.stderr);
        assert!(stderr.contains("the sign-in endpoint"), "{stderr}");
        if std::ptr::eq(endpoint, &json) {
            assert!(stderr.contains("invalid_client: AADSTS7000215"), "{stderr}");
            let shown = stderr.split("invalid_client: ").nth(1).unwrap().split(" (").next().unwrap();
            assert!(shown.chars().count() <= 300, "{} characters: {shown}", shown.chars().count());
        }
    }
    lab.assert_no_writes();
}

// ---------------------------------------------------------------------------------------------------------------
// §3 Apply acts on the objects the reviewer saw: the review shows them.
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn a_users_label_on_a_groups_id_shows_the_id_and_apply_refuses_it_with_zero_writes() {
    let lab = Lab::new();
    // The ninth user's UPN as the label of an add whose id is the group's own (a group, not a user).
    let mut plan = lab.plan();
    plan.groups[0].changes[0].user_id = oid(&lab.group);
    let path = lab.sign_bytes(&plan::encode(&plan, PlanFormat::Json), "plan.json");
    let shown = lab.run(&["show", "plan.json", "--allowed-signers", "allowed_signers"]);
    assert_eq!(shown.status.code(), Some(0), "{}", text(&shown.stderr));
    let stdout = text(&shown.stdout);
    let row = stdout.lines().find(|l| l.contains("user9@contoso.example")).unwrap_or_default();
    assert!(row.contains(&oid(&lab.group).short()), "the review hides the object behind the label:\n{stdout}");
    assert!(!row.contains(&oid(&lab.users[8]).short()), "the short id is the object's, not the label's: {row}");
    refused(&lab.apply(&path, &[]), 27, &[&lab.group, "not a user", "user9@contoso.example"]);
    lab.assert_no_writes();
}

#[test]
fn the_review_names_the_group_as_graph_does_with_the_plans_label_beside_it() {
    let lab = Lab::new();
    let mut plan = lab.plan();
    plan.groups[0].display_name = Some("Newsletter subscribers".into());
    let path = lab.sign_bytes(&plan::encode(&plan, PlanFormat::Json), "plan.json");
    // Named otherwise in Graph: refused, naming both names and the flag.
    refused(&lab.apply(&path, &["--dry-run"]), 27, &["Newsletter subscribers", "'Staff'", "--accept-group-rename"]);
    // Accepted: the review and the dry run show Graph's name first, the plan's beside it.
    let out = lab.apply(&path, &["--dry-run", "--accept-group-rename"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", text(&out.stderr));
    let both = "Staff (the plan says \"Newsletter subscribers\")";
    assert!(stdout.contains(both), "{stdout}");
    assert!(!stdout.lines().any(|l| l.contains("Newsletter subscribers") && !l.contains(both)), "{stdout}");
    for change in &plan.groups[0].changes {
        let row = stdout.lines().find(|l| l.contains(&format!(" {} ", change.upn))).unwrap_or_default();
        assert!(row.contains(&change.user_id.short()), "no short id beside {}:\n{stdout}", change.upn);
    }
    // check reads the group's name too.
    let checked = lab.run(&["check", "plan.json", "--allowed-signers", "allowed_signers"]);
    assert!(text(&checked.stdout).contains(both), "{}\n{}", text(&checked.stdout), text(&checked.stderr));
    lab.assert_no_writes();
}

#[test]
fn a_service_principal_labelled_with_a_users_upn_is_refused_with_zero_writes() {
    let sp = guid(5, 1);
    let lab = Lab::with_others(vec![SeedObject {
        id: sp.clone(),
        odata_type: "#microsoft.graph.servicePrincipal".into(),
        display_name: Some("Payroll bot".into()),
        extra: Default::default(),
    }]);
    // The plan removes the service principal (a member of the group) under the third user's UPN.
    let mut plan = lab.plan();
    let users: Vec<ObjectId> = lab.users[..8].iter().map(|u| oid(u)).collect();
    plan.groups[0].precondition = Precondition::from_members(&users);
    let remove = plan.groups[0].changes.iter_mut().find(|c| c.action == Action::Remove).unwrap();
    remove.user_id = oid(&sp);
    remove.upn = "user3@contoso.example".into();
    let path = lab.sign_bytes(&plan::encode(&plan, PlanFormat::Json), "plan.json");
    let shown = text(&lab.run(&["show", "plan.json", "--allowed-signers", "allowed_signers"]).stdout);
    let row = shown.lines().find(|l| l.contains("user3@contoso.example")).unwrap_or_default();
    assert!(row.contains(&oid(&sp).short()), "the review shows the object's own id:\n{shown}");
    refused(&lab.apply(&path, &[]), 27, &[&sp, "service principal", "not a user", "user3@contoso.example"]);
    lab.assert_no_writes();
}
