//! End-to-end tests of `writeback plan` reading live services: the real binary against the fake Microsoft Graph
//! and the fake PoliteMail on 127.0.0.1 (see `docs/fakes.md`), seeded with the same data as the CSV samples.
//!
//! The central claim (issue 3 §6): the list from the PoliteMail API and the group from Graph give the same plan as
//! the equivalent exports, also when the services throttle, fail, drop connections or expire tokens.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use support::fake_graph::{self as fg, FakeGraph, RetryAfter, SeedGroup};
use support::fake_politemail::{self as fp, FakePoliteMail};
use support::samples;
use support::text;

const TENANT: &str = "bf88b34e-db80-46f7-8aa4-acb3c54f52e1";
const ALL_STAFF: &str = "b53a97e9-e214-49f9-9d7e-4e4a23c5c243";
const MANAGERS: &str = "4215fbad-0d2a-4fcf-bf8c-01ee7318e9cb";
/// The header every token the fake Graph issues starts with (`{"typ":"JWT",…`, base64url): a token in any output
/// shows up as this.
const JWT_PREFIX: &str = "eyJ0eXAiOiJKV1Qi";

fn sample(name: &str) -> String {
    samples().join(name).to_string_lossy().into_owned()
}

/// A working folder with the samples and the demo keys made private, without `writeback.toml` (whose
/// `users = entra-users.csv` default would stop the users from being read from Graph).
fn workspace() -> tempfile::TempDir {
    let dir = support::workspace();
    std::fs::remove_file(dir.path().join("writeback.toml")).unwrap();
    dir
}

fn graph_seed() -> fg::Seed {
    fg::Seed::from_file(&sample("fake-tenant.json")).unwrap()
}

fn pm_seed() -> fp::Seed {
    fp::Seed::from_file(&sample("fake-politemail.json")).unwrap()
}

/// The fakes with the sample data.
struct Fakes {
    graph: FakeGraph,
    pm: FakePoliteMail,
}

impl Fakes {
    fn start() -> Fakes {
        Fakes::with(graph_seed(), fg::Config::default(), fp::Config::default())
    }

    fn with(seed: fg::Seed, graph: fg::Config, pm: fp::Config) -> Fakes {
        Fakes { graph: FakeGraph::start_with(seed, graph), pm: FakePoliteMail::start_with(pm_seed(), pm) }
    }

    /// Everything writeback needs to reach both fakes, with short retry waits.
    fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = self.graph.env();
        env.extend(self.pm.env());
        env.push(("WRITEBACK_RETRY_BASE_MS", "5".into()));
        env
    }

    /// The secrets both fakes accept; none may ever appear in an output.
    fn secrets(&self) -> Vec<String> {
        let mut s = vec![self.graph.client_secret.clone(), self.pm.password.clone(), JWT_PREFIX.to_string()];
        s.extend(self.pm.pat.clone());
        s
    }
}

/// Runs the binary in `dir` with `env` set (the fakes' addresses and secrets) and none of the developer's own
/// writeback or sign-in variables ([`support::command`]).
fn writeback(dir: &Path, env: &[(&str, String)], args: &[&str]) -> Output {
    support::writeback_with(dir, args, env)
}

fn all_output(run: &Output) -> String {
    format!("{}{}", text(&run.stdout), text(&run.stderr))
}

fn read_plan(dir: &Path, out: &str) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join(out)).unwrap()).unwrap()
}

/// One sample mapping: the PoliteMail list and the Entra group, and their export files.
#[derive(Clone, Copy)]
struct Mapping {
    list_name: &'static str,
    list_id: &'static str,
    group_name: &'static str,
    group_id: &'static str,
    contacts_csv: &'static str,
    members_csv: &'static str,
}

const ALL_STAFF_MAP: Mapping = Mapping {
    list_name: "All Staff",
    list_id: "12",
    group_name: "All Staff",
    group_id: ALL_STAFF,
    contacts_csv: "politemail-all-staff.csv",
    members_csv: "entra-members-all-staff.csv",
};

const MANAGERS_MAP: Mapping = Mapping {
    list_name: "Managers",
    list_id: "15",
    group_name: "Managers",
    group_id: MANAGERS,
    contacts_csv: "politemail-managers.csv",
    members_csv: "entra-members-managers.csv",
};

fn plan_args<'a>(out: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["plan", "--key", "keys/demo-planner", "--keep", "keep.txt", "--out", out];
    args.extend_from_slice(rest);
    args
}

/// The plan from the CSV exports (no service involved).
fn csv_plan(dir: &Path, m: Mapping) -> Value {
    let out = format!("csv-{}.json", m.list_id);
    let args = plan_args(
        &out,
        &[
            "--contacts",
            m.contacts_csv,
            "--members",
            m.members_csv,
            "--users",
            "entra-users.csv",
            "--group",
            m.group_id,
        ],
    );
    let run = writeback(dir, &[], &args);
    assert!(run.status.success(), "CSV plan failed: {}", text(&run.stderr));
    read_plan(dir, &out)
}

/// The plan from the fakes, naming the list and the group as given.
fn live_run(dir: &Path, env: &[(&str, String)], list: &str, group: &str, out: &str, extra: &[&str]) -> Output {
    let mut args = plan_args(out, &["--list", list, "--group", group]);
    args.extend_from_slice(extra);
    writeback(dir, env, &args)
}

fn live_plan(dir: &Path, fakes: &Fakes, list: &str, group: &str) -> Value {
    let out = format!("live-{}.json", uuid::Uuid::new_v4());
    let run = live_run(dir, &fakes.env(), list, group, &out, &[]);
    assert!(run.status.success(), "live plan failed: {}", text(&run.stderr));
    for secret in fakes.secrets() {
        assert!(!all_output(&run).contains(&secret), "a secret in the output");
    }
    read_plan(dir, &out)
}

/// What must be equal between a plan from exports and one from the live services, per group.
///
/// Compared: the changes (action, user id, flags), the entries not acted on (kind, with the contact's address or
/// the object id), the counts, and the precondition (member count and hash). Not compared, because it may
/// rightly differ: provenance. Source lines (a CSV line counts the header, an API contact's "line" is its 1-based
/// position in the answer, and a member read from Graph has no line at all), the `detail` texts that quote those
/// lines, the input records (a file path and the file's hash, versus the service URL and the hash of what it
/// answered), display names of skipped objects (the members export and Graph may spell them differently), and the
/// plan's id, times, tenant id (exports do not carry it) and the group's display name (given by flag or not at all
/// offline).
#[derive(Debug, PartialEq, Eq)]
struct Essence {
    changes: BTreeSet<(String, String, Vec<String>)>,
    not_acted_on: Vec<(String, String)>,
    counts: Value,
    member_count: u64,
    members_sha256: String,
}

fn essence(plan: &Value) -> Vec<Essence> {
    plan["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            let changes = g["changes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    let mut flags: Vec<String> =
                        c["flags"].as_array().unwrap().iter().map(|f| f.as_str().unwrap().to_string()).collect();
                    flags.sort();
                    (c["action"].as_str().unwrap().to_string(), c["user_id"].as_str().unwrap().to_string(), flags)
                })
                .collect();
            let mut not_acted_on: Vec<(String, String)> = g["not_acted_on"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    let what = s["email"].as_str().or(s["object_id"].as_str()).unwrap_or("").to_string();
                    (s["kind"].as_str().unwrap().to_string(), what)
                })
                .collect();
            not_acted_on.sort();
            Essence {
                changes,
                not_acted_on,
                counts: g["counts"].clone(),
                member_count: g["precondition"]["member_count"].as_u64().unwrap(),
                members_sha256: g["precondition"]["members_sha256"].as_str().unwrap().to_string(),
            }
        })
        .collect()
}

/// Asserts the live plan (from `fakes`, list and group by name) equals the CSV plan for `m`.
fn assert_agrees(dir: &Path, fakes: &Fakes, m: Mapping, csv: &Value) {
    let live = live_plan(dir, fakes, m.list_name, m.group_name);
    assert_eq!(essence(&live), essence(csv), "{}: the live plan differs from the CSV plan", m.list_name);
}

#[test]
fn live_reads_and_exports_give_the_same_plan() {
    let dir = workspace();
    let fakes = Fakes::start();
    for m in [ALL_STAFF_MAP, MANAGERS_MAP] {
        let csv = csv_plan(dir.path(), m);
        let by_name = live_plan(dir.path(), &fakes, m.list_name, m.group_name);
        let by_id = live_plan(dir.path(), &fakes, m.list_id, m.group_id);
        assert_eq!(essence(&by_name), essence(&csv), "{}: by name", m.list_name);
        assert_eq!(essence(&by_id), essence(&csv), "{}: by id", m.list_name);
        let e = &essence(&csv)[0];
        assert!(e.changes.iter().any(|c| c.0 == "add") && e.changes.iter().any(|c| c.0 == "remove"));
        for live in [&by_name, &by_id] {
            assert_eq!(live["tenant_id"], TENANT, "the live plan records the tenant");
            assert_eq!(live["groups"][0]["display_name"], m.group_name, "and the group's display name");
            let inputs = live["groups"][0]["inputs"].to_string();
            assert!(inputs.contains("PoliteMail API") && inputs.contains("Microsoft Graph"), "{inputs}");
        }
    }
    // All Staff (about 290 addresses in a 339-user tenant) reads all users; Managers (31) looks addresses up: the
    // two resolution paths give the same users.
    let scans = fakes.graph.count(|r| r.method == "GET" && r.path_only().ends_with("/users") && r.batch_item.is_none());
    assert!(scans >= 2, "All Staff reads the users list");
    assert!(fakes.graph.count(|r| r.is_batch()) >= 2, "Managers uses $batch lookups");
    fakes.graph.assert_no_misuse();
    assert_eq!(fakes.graph.count(|r| r.is_write()), 0, "plan never writes");
}

/// The same plan as the exports, for both mappings, with the fakes set up by `graph` and `pm`.
fn agrees_under(graph: fg::Config, pm: fp::Config, check: impl Fn(&Fakes)) {
    let dir = workspace();
    let fakes = Fakes::with(graph_seed(), graph, pm);
    for m in [ALL_STAFF_MAP, MANAGERS_MAP] {
        let csv = csv_plan(dir.path(), m);
        assert_agrees(dir.path(), &fakes, m, &csv);
    }
    check(&fakes);
}

fn faults(f: fg::Faults) -> fg::Config {
    fg::Config { faults: f, ..fg::Config::default() }
}

fn status_count(g: &FakeGraph, status: u16) -> usize {
    g.count(|r| r.status == status)
}

#[test]
fn throttling_with_fractional_retry_after_seconds() {
    let f = fg::Faults { throttle_every: Some(3), retry_after: RetryAfter::Seconds(0.05), ..fg::Faults::default() };
    agrees_under(faults(f), fp::Config::default(), |fakes| assert!(status_count(&fakes.graph, 429) >= 5));
}

#[test]
fn throttling_with_an_http_date() {
    // The date is whole seconds ahead of the server's clock; a few throttles keep the test short.
    let f = fg::Faults { throttle_every: Some(20), retry_after: RetryAfter::HttpDate(1), ..fg::Faults::default() };
    agrees_under(faults(f), fp::Config::default(), |fakes| assert!(status_count(&fakes.graph, 429) >= 1));
}

#[test]
fn bursts_of_server_errors() {
    let f = fg::Faults { server_errors: vec![503, 500, 502, 504, 503], ..fg::Faults::default() };
    let dir = workspace();
    let fakes = Fakes::with(graph_seed(), faults(f), fp::Config::default());
    let csv = csv_plan(dir.path(), MANAGERS_MAP);
    assert_agrees(dir.path(), &fakes, MANAGERS_MAP, &csv);
    // A second burst, now with Retry-After on the 503s, in the middle of the next run's requests.
    fakes.graph.update_faults(|f| {
        f.server_errors = vec![503, 503, 500];
        f.server_error_retry_after = true;
    });
    assert_agrees(dir.path(), &fakes, MANAGERS_MAP, &csv);
    assert_eq!(fakes.graph.faults().server_errors.len(), 0, "every planned error was served");
    assert!(status_count(&fakes.graph, 503) >= 4);
}

#[test]
fn dropped_connections() {
    let f = fg::Faults { drop_before: 2, drop_after: 1, ..fg::Faults::default() };
    let pm =
        fp::Config { faults: fp::Faults { drop_next: 1, ..fp::Config::default().faults }, ..fp::Config::default() };
    agrees_under(faults(f), pm, |fakes| assert!(status_count(&fakes.graph, 0) >= 3));
}

/// writeback's request timeout is fixed (100 s; `HttpConfig::from_env` reads only the retry variables), so a
/// "slower than the timeout" answer cannot be tested in seconds. Slow answers within it must still work.
#[test]
fn slow_answers() {
    let f = fg::Faults { delay: Some(Duration::from_millis(15)), ..fg::Faults::default() };
    let pm = fp::Config {
        faults: fp::Faults { delay: Some(Duration::from_millis(15)), ..fp::Config::default().faults },
        ..fp::Config::default()
    };
    agrees_under(faults(f), pm, |_| {});
}

#[test]
fn tokens_expiring_mid_run() {
    // Each token is good for two Graph calls, then answers 401 "Lifetime validation failed".
    let cfg = fg::Config { token_max_uses: Some(2), ..fg::Config::default() };
    agrees_under(cfg, fp::Config::default(), |fakes| {
        assert!(fakes.graph.tokens_issued() >= 4, "a new token after each expiry");
        assert!(status_count(&fakes.graph, 401) >= 2, "tokens expired during the runs");
    });
}

#[test]
fn a_short_token_lifetime_is_refreshed_ahead() {
    // Tokens that live one second are refreshed before they expire (and after a 401 if one slips through).
    let f = fg::Faults { delay: Some(Duration::from_millis(40)), ..fg::Faults::default() };
    let cfg = fg::Config { token_lifetime: Duration::from_secs(1), ..faults(f) };
    agrees_under(cfg, fp::Config::default(), |fakes| assert!(fakes.graph.tokens_issued() >= 2));
}

#[test]
fn politemail_throttling_and_errors() {
    let pm = fp::Config {
        faults: fp::Faults {
            throttle_every: Some(2),
            retry_after: Some(0.05),
            server_errors: vec![503, 500],
            ..fp::Faults::default()
        },
        page_size: Some(50),
        ..fp::Config::default()
    };
    agrees_under(fg::Config::default(), pm, |fakes| {
        assert!(fakes.pm.count(|r| r.status == 429) >= 3, "PoliteMail throttled");
    });
}

#[test]
fn a_fault_beyond_the_retry_budget_fails_cleanly() {
    let dir = workspace();
    let f = fg::Faults { server_errors: vec![503; 50], ..fg::Faults::default() };
    let fakes = Fakes::with(graph_seed(), faults(f), fp::Config::default());
    let mut env = fakes.env();
    env.push(("WRITEBACK_RETRY_MAX_ATTEMPTS", "3".into()));
    let run = live_run(dir.path(), &env, "All Staff", "All Staff", "never.json", &[]);
    let stderr = text(&run.stderr);
    assert_eq!(run.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("503 ServiceUnavailable"), "Graph's code: {stderr}");
    assert!(stderr.contains("The service is temporarily unavailable"), "Graph's message: {stderr}");
    // The request-id Graph gave the last attempt is in the message.
    let last = fakes.graph.requests().into_iter().rfind(|r| r.status == 503).unwrap();
    assert!(stderr.contains("request-id "), "{stderr}");
    assert!(stderr.contains(last.header("client-request-id").unwrap()), "{stderr}");
    assert_eq!(fakes.graph.count(|r| r.status == 503), 3, "three attempts, as configured");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!dir.path().join("never.json").exists() && !dir.path().join("never.json.sig").exists());
}

/// The sample tenant with All Staff changed by `change`.
fn seed_with_all_staff(change: impl Fn(&mut SeedGroup)) -> fg::Seed {
    let mut seed = graph_seed();
    let group = seed.groups.iter_mut().find(|g| g.id == ALL_STAFF).unwrap();
    change(group);
    seed
}

#[test]
fn groups_graph_cannot_change_are_refused_at_plan_time() {
    type Change = fn(&mut SeedGroup);
    let cases: Vec<(Change, &str)> = vec![
        (
            |g| {
                g.group_types = vec!["DynamicMembership".into()];
                g.membership_rule = Some("user.department -eq \"Staff\"".into());
            },
            "dynamic membership",
        ),
        (
            |g| {
                g.mail_enabled = true;
                g.security_enabled = true;
            },
            "mail-enabled security group",
        ),
        (
            |g| {
                g.mail_enabled = true;
                g.security_enabled = false;
            },
            "distribution group",
        ),
        (|g| g.on_premises_sync_enabled = Some(true), "on-premises"),
    ];
    let dir = workspace();
    for (change, reason) in cases {
        let fakes = Fakes::with(seed_with_all_staff(change), fg::Config::default(), fp::Config::default());
        let run = live_run(dir.path(), &fakes.env(), "All Staff", "All Staff", "refused.json", &[]);
        let stderr = text(&run.stderr);
        assert_eq!(run.status.code(), Some(21), "{reason}: {stderr}");
        assert!(stderr.contains(reason) && stderr.contains(ALL_STAFF), "{reason}: {stderr}");
        assert!(!stderr.contains("panicked"));
        assert!(!dir.path().join("refused.json").exists() && !dir.path().join("refused.json.sig").exists());
        assert_eq!(fakes.graph.count(|r| r.is_member_page(ALL_STAFF)), 0, "refused before reading members");
    }
}

#[test]
fn a_role_assignable_group_is_planned_with_a_warning() {
    let dir = workspace();
    let fakes = Fakes::with(
        seed_with_all_staff(|g| g.is_assignable_to_role = true),
        fg::Config::default(),
        fp::Config::default(),
    );
    let run = live_run(dir.path(), &fakes.env(), "All Staff", "All Staff", "role.json", &[]);
    let stderr = text(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("warning:") && stderr.contains("RoleManagement.ReadWrite.Directory"), "{stderr}");
    let csv = csv_plan(dir.path(), ALL_STAFF_MAP);
    assert_eq!(essence(&read_plan(dir.path(), "role.json")), essence(&csv));
}

#[test]
fn unknown_and_duplicate_group_names() {
    let dir = workspace();
    let fakes = Fakes::start();
    let run = live_run(dir.path(), &fakes.env(), "All Staff", "All Staf", "x.json", &[]);
    let stderr = text(&run.stderr);
    assert_eq!(run.status.code(), Some(21), "{stderr}");
    assert!(stderr.contains("no group is named 'All Staf'"), "{stderr}");
    assert!(!dir.path().join("x.json").exists());

    let mut seed = graph_seed();
    let twin = "0f2b2c57-5a5e-4b7e-9a55-2a3c4d5e6f70";
    seed.groups.push(SeedGroup::security(twin, "All Staff", vec![]));
    let fakes = Fakes::with(seed, fg::Config::default(), fp::Config::default());
    let run = live_run(dir.path(), &fakes.env(), "All Staff", "All Staff", "x.json", &[]);
    let stderr = text(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(ALL_STAFF) && stderr.contains(twin), "both candidates listed: {stderr}");
    assert!(!dir.path().join("x.json").exists());
    // The id still picks one of them.
    let csv = csv_plan(dir.path(), ALL_STAFF_MAP);
    assert_eq!(essence(&live_plan(dir.path(), &fakes, "All Staff", ALL_STAFF)), essence(&csv));
}

/// Environment variables for a run.
type Env = Vec<(&'static str, String)>;

fn without(env: Vec<(&'static str, String)>, names: &[&str]) -> Vec<(&'static str, String)> {
    env.into_iter().filter(|(k, _)| !names.contains(k)).collect()
}

fn with(mut env: Vec<(&'static str, String)>, name: &'static str, value: &str) -> Vec<(&'static str, String)> {
    env.retain(|(k, _)| *k != name);
    env.push((name, value.to_string()));
    env
}

#[test]
fn a_bad_client_secret_names_the_variables_and_never_the_secret() {
    let dir = workspace();
    let fakes = Fakes::start();
    let wrong = "Wr0ng~Secret.Value-1234567890";
    for verbosity in [None, Some("-v"), Some("-vv")] {
        let env = with(fakes.env(), "AZURE_CLIENT_SECRET", wrong);
        let mut args: Vec<&str> = verbosity.into_iter().collect();
        args.extend(plan_args("x.json", &["--list", "All Staff", "--group", "All Staff"]));
        let run = writeback(dir.path(), &env, &args);
        let stderr = text(&run.stderr);
        assert_eq!(run.status.code(), Some(4), "{stderr}");
        assert!(stderr.contains("AADSTS7000215"), "the sign-in endpoint's code: {stderr}");
        assert!(stderr.contains("AZURE_TENANT_ID") && stderr.contains("AZURE_CLIENT_ID"), "{stderr}");
        assert!(!all_output(&run).contains(wrong), "the secret was printed");
        assert!(!all_output(&run).contains(&fakes.graph.client_secret));
        assert!(!dir.path().join("x.json").exists());
    }
}

#[test]
fn a_ready_access_token_works_and_is_never_printed() {
    let dir = workspace();
    let fakes = Fakes::start();
    let token = fakes.graph.issue_token();
    let env = with(
        without(fakes.env(), &["AZURE_CLIENT_SECRET", "AZURE_CLIENT_ID", "AZURE_TENANT_ID"]),
        "WRITEBACK_ACCESS_TOKEN",
        &token,
    );
    let mut args = vec!["-vv"];
    args.extend(plan_args("token.json", &["--list", "Managers", "--group", "Managers"]));
    let run = writeback(dir.path(), &env, &args);
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(!all_output(&run).contains(&token) && !all_output(&run).contains(JWT_PREFIX));
    let plan = read_plan(dir.path(), "token.json");
    assert_eq!(plan["tenant_id"], TENANT, "the tenant comes from the token");
    assert_eq!(essence(&plan), essence(&csv_plan(dir.path(), MANAGERS_MAP)));
    assert_eq!(fakes.graph.count(|r| r.is_token()), 0, "no sign-in with a ready token");
    assert!(!std::fs::read_to_string(dir.path().join("token.json")).unwrap().contains(JWT_PREFIX));
}

#[test]
fn politemail_refusing_the_password_names_the_variables() {
    let dir = workspace();
    let fakes = Fakes::start();
    let wrong = "not-the-politemail-password";
    let env = with(fakes.env(), "POLITEMAIL_PASSWORD", wrong);
    let run = live_run(dir.path(), &env, "All Staff", "All Staff", "x.json", &[]);
    let stderr = text(&run.stderr);
    assert_eq!(run.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("401"), "{stderr}");
    assert!(stderr.contains("POLITEMAIL_USER and POLITEMAIL_PASSWORD"), "{stderr}");
    assert!(!all_output(&run).contains(wrong) && !all_output(&run).contains(&fakes.pm.password));
    assert!(!dir.path().join("x.json").exists());

    // A wrong personal access token: the message names POLITEMAIL_TOKEN.
    let env =
        with(without(fakes.env(), &["POLITEMAIL_USER", "POLITEMAIL_PASSWORD"]), "POLITEMAIL_TOKEN", "pm-pat-wrong");
    let run = live_run(dir.path(), &env, "All Staff", "All Staff", "x.json", &[]);
    let stderr = text(&run.stderr);
    assert_eq!(run.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("POLITEMAIL_TOKEN") && !stderr.contains("pm-pat-wrong"), "{stderr}");
}

#[test]
fn a_politemail_token_works() {
    let dir = workspace();
    let fakes = Fakes::start();
    let pat = fakes.pm.pat.clone().unwrap();
    let env = with(without(fakes.env(), &["POLITEMAIL_USER", "POLITEMAIL_PASSWORD"]), "POLITEMAIL_TOKEN", &pat);
    let run = live_run(dir.path(), &env, "Managers", "Managers", "pat.json", &["-v"]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(!all_output(&run).contains(&pat));
}

#[test]
fn an_unknown_list_suggests_near_names() {
    let dir = workspace();
    let fakes = Fakes::start();
    let run = live_run(dir.path(), &fakes.env(), "Al Staff", "All Staff", "x.json", &[]);
    let stderr = text(&run.stderr);
    assert_eq!(run.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("Al Staff") && stderr.contains("All Staff"), "the near name is suggested: {stderr}");
    assert!(!dir.path().join("x.json").exists());
}

#[test]
fn without_user_read_all_the_missing_permission_is_named() {
    let dir = workspace();
    let fakes =
        Fakes::with(graph_seed(), fg::Config { user_read_all: false, ..fg::Config::default() }, fp::Config::default());
    let run = live_run(dir.path(), &fakes.env(), "All Staff", "All Staff", "x.json", &[]);
    let stderr = text(&run.stderr);
    assert_eq!(run.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("User.Read.All"), "{stderr}");
    assert!(!stderr.contains("panicked"));
    assert!(!dir.path().join("x.json").exists());
}

#[test]
fn verbose_shows_each_retry_and_no_secret_at_any_verbosity() {
    let dir = workspace();
    let f = fg::Faults { throttle_every: Some(4), server_errors: vec![503], ..fg::Faults::default() };
    let pm = fp::Config {
        faults: fp::Faults { throttle_every: Some(2), retry_after: Some(0.01), ..fp::Faults::default() },
        ..fp::Config::default()
    };
    let fakes = Fakes::with(graph_seed(), faults(f), pm);
    let runs: Vec<(Vec<&str>, Env)> = vec![
        (vec![], fakes.env()),
        (vec!["-v"], fakes.env()),
        (vec!["-vv"], fakes.env()),
        (vec![], with(fakes.env(), "WRITEBACK_LOG", "trace")),
    ];
    for (i, (flags, env)) in runs.into_iter().enumerate() {
        let out = format!("v{i}.json");
        let graph_before = fakes.graph.count(|r| matches!(r.status, 429 | 503));
        let graph_before_all = fakes.graph.count(|r| r.batch_item.is_none() && !r.is_token());
        let pm_before = fakes.pm.count(|r| r.status == 429);
        let mut args = flags.clone();
        args.extend(plan_args(&out, &["--list", "All Staff", "--group", "All Staff"]));
        let run = writeback(dir.path(), &env, &args);
        let output = all_output(&run);
        assert!(run.status.success(), "{flags:?}: {}", text(&run.stderr));
        for secret in fakes.secrets() {
            assert!(!output.contains(&secret), "{flags:?}: a secret or token in the output");
        }
        let written = std::fs::read_to_string(dir.path().join(&out)).unwrap();
        assert!(fakes.secrets().iter().all(|s| !written.contains(s)), "a secret in the plan");
        // Live reads show their progress on stderr: without a terminal, the first page, then a line at most every
        // 5 seconds.
        assert!(text(&run.stderr).contains("reading: 1 page, "), "{flags:?}: {}", text(&run.stderr));
        if flags == ["-v"] {
            let graph_retries = fakes.graph.count(|r| matches!(r.status, 429 | 503)) - graph_before;
            let pm_retries = fakes.pm.count(|r| r.status == 429) - pm_before;
            let stderr = text(&run.stderr);
            let logged =
                |service: &str| stderr.lines().filter(|l| l.contains(service) && l.contains("retrying in")).count();
            assert!(graph_retries >= 1 && pm_retries >= 1, "the faults fired");
            assert_eq!(logged("Microsoft Graph"), graph_retries, "one line per Graph retry: {stderr}");
            assert_eq!(logged("PoliteMail"), pm_retries, "one line per PoliteMail retry: {stderr}");
            assert!(stderr.contains("request-id "), "{stderr}");
            // One line per request with the method, the path (never a query string), the status and the time.
            let graph_requests = fakes.graph.count(|r| r.batch_item.is_none() && !r.is_token()) - graph_before_all;
            let lines: Vec<&str> = stderr.lines().filter(|l| l.ends_with(" ms")).collect();
            let graph_lines = lines.iter().filter(|l| l.contains("Microsoft Graph: ")).count();
            assert_eq!(graph_lines, graph_requests, "one line per Graph request: {stderr}");
            assert!(lines.iter().any(|l| l.contains("Microsoft Graph: GET /v1.0/groups/") && l.contains(" 200 in ")));
            assert!(lines.iter().any(|l| l.contains("PoliteMail: GET ") && l.contains(" 429 in ")), "{stderr}");
            assert!(lines.iter().all(|l| !l.contains('?')), "no query strings: {stderr}");
            assert!(!stderr.contains('\u{1b}'), "no colour when stderr is not a terminal: {stderr:?}");
        }
    }
}

#[test]
fn plain_http_to_another_host_is_refused() {
    let dir = workspace();
    let fakes = Fakes::start();
    let cases: Vec<(Env, Vec<&str>, &str)> = vec![
        (fakes.env(), vec!["--graph-url", "http://graph.example.com/v1.0"], "--graph-url"),
        (with(fakes.env(), "WRITEBACK_GRAPH_URL", "http://10.1.2.3/v1.0"), vec![], "--graph-url"),
        (fakes.env(), vec!["--login-url", "http://login.example.com"], "--login-url"),
        (with(fakes.env(), "POLITEMAIL_URL", "http://pm.example.com/api/odata"), vec![], "POLITEMAIL_URL"),
    ];
    for (env, extra, what) in cases {
        let run = live_run(dir.path(), &env, "All Staff", "All Staff", "x.json", &extra);
        let stderr = text(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{what}: {stderr}");
        assert!(stderr.contains(what) && stderr.contains("https"), "{what}: {stderr}");
        assert!(!dir.path().join("x.json").exists());
    }
    assert_eq!(fakes.graph.count(|r| r.is_token()), 0, "nothing was sent, not even a sign-in");
}

/// The users a list's addresses resolve to in `seed`, as Graph gives them, by the rule any Graph read follows: a
/// user whose UPN, mail or `smtp:` proxy address is one of the addresses.
fn resolved_users(seed: &fg::Seed, addresses: &BTreeSet<String>) -> Vec<writeback::directory::DirectoryUser> {
    use writeback::directory::{DirectoryUser, UserType};
    use writeback::identity::{address_key, smtp_proxy_address, ObjectId};
    let wanted = |a: &str| addresses.contains(&address_key(a));
    seed.users
        .iter()
        .filter(|u| {
            wanted(&u.user_principal_name)
                || u.mail.as_deref().is_some_and(wanted)
                || u.proxy_addresses.iter().filter_map(|p| smtp_proxy_address(p)).any(wanted)
        })
        .map(|u| DirectoryUser {
            id: ObjectId::parse(&u.id).unwrap(),
            upn: u.user_principal_name.clone(),
            display_name: u.display_name.clone(),
            mail: u.mail.clone(),
            user_type: match u.user_type.as_deref() {
                Some("Member") => UserType::Member,
                Some("Guest") => UserType::Guest,
                _ => UserType::Unknown,
            },
            account_enabled: Some(u.account_enabled),
            proxy_addresses: u.proxy_addresses.clone(),
        })
        .collect()
}

/// The addresses of the PoliteMail list `name` in `lists`, as writeback normalizes them (invalid ones left out).
fn list_addresses(lists: &fp::Seed, name: &str) -> BTreeSet<String> {
    let list = lists.lists.iter().find(|l| l.name == name).unwrap();
    list.contacts
        .iter()
        .filter_map(|c| c.get("Email").and_then(Value::as_str))
        .filter_map(|e| writeback::identity::Email::parse(e).ok())
        .map(|e| e.as_str().to_string())
        .collect()
}

/// The SHA-256 (hex) a plan records for `users` read from Graph: that of their canonical form, whole.
fn users_sha256(users: &[writeback::directory::DirectoryUser]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(writeback::directory::graph::canonical_users(users)))
}

/// The users input record of a one-group plan.
fn users_input(plan: &Value) -> &Value {
    let inputs = plan["groups"][0]["inputs"].as_array().unwrap();
    inputs.iter().find(|i| i["role"] == "users").unwrap()
}

/// A live plan streams the users it reads (keeping each one's proxy addresses in a few bytes beside a compact
/// table) and still records, for the users input, the hash of exactly what Graph answered: the same hash the
/// whole users would give, whatever their proxy addresses look like. Both ways of reading users (all of them, and
/// lookups) are covered.
#[test]
fn the_users_input_hash_covers_every_proxy_address_as_graph_gave_it() {
    let dir = workspace();
    let mut seed = graph_seed();
    let lists = pm_seed();
    // Odd proxy addresses on some users each list resolves to: the UPN and mail under either prefix and in another
    // case, other schemes, repeats, spaces, an empty address, and none at all.
    let odd: [&[&str]; 4] = [
        &[
            "smtp:{mail}",
            "SMTP:{upn}",
            "sip:{upn}",
            "X500:/o=Contoso/cn=x",
            "smtp:{mail}",
            "SMTP: spaced@contoso.example ",
        ],
        &[
            "Smtp:{upn}",
            "smtp:",
            "SMTP:{UPN}",
            "smtp:{upn}",
            "smtp:second@contoso.example",
            "SMTP:second@contoso.example",
        ],
        &[],
        &["eum:1234;phone-context=contoso.example", "SMTP:{mail}"],
    ];
    let mut changed = 0;
    for m in [ALL_STAFF_MAP, MANAGERS_MAP] {
        let addresses = list_addresses(&lists, m.list_name);
        let ids: Vec<String> = resolved_users(&seed, &addresses).iter().map(|u| u.id.to_string()).take(4).collect();
        for (id, proxies) in ids.iter().zip(odd) {
            let user = seed.users.iter_mut().find(|u| &u.id == id).unwrap();
            let (upn, mail) = (user.user_principal_name.clone(), user.mail.clone().unwrap_or_default());
            user.proxy_addresses = proxies
                .iter()
                .map(|p| p.replace("{upn}", &upn).replace("{UPN}", &upn.to_uppercase()).replace("{mail}", &mail))
                .collect();
            changed += 1;
        }
    }
    assert!(changed >= 8);
    let fakes = Fakes::with(seed.clone(), fg::Config::default(), fp::Config::default());
    for m in [ALL_STAFF_MAP, MANAGERS_MAP] {
        let plan = live_plan(dir.path(), &fakes, m.list_name, m.group_name);
        let addresses = list_addresses(&lists, m.list_name);
        let users = resolved_users(&seed, &addresses);
        let recorded = users_input(&plan);
        assert_eq!(recorded["sha256"], users_sha256(&users).as_str(), "{}: {recorded}", m.list_name);
        let description = recorded["description"].as_str().unwrap();
        assert!(description.contains(&format!("{} users matching {} list addresses", users.len(), addresses.len())));
    }
}

/// A user that changes between the read of the group's members and the read of the users (its two copies differ)
/// is never planned from the mix: writeback reads the group and the users again, whole, and plans from what that
/// read saw. The fake holds the users' read until the test has renamed a member the list resolves to.
#[test]
fn a_user_changed_between_the_member_and_user_reads_is_planned_from_one_read() {
    let dir = workspace();
    let seed = graph_seed();
    let fakes = Fakes::with(seed.clone(), fg::Config::default(), fp::Config::default());
    let lists = pm_seed();
    let addresses = list_addresses(&lists, ALL_STAFF_MAP.list_name);
    let members = fakes.graph.members(ALL_STAFF);
    let resolved = resolved_users(&seed, &addresses);
    let changed = resolved.iter().find(|u| members.contains(&u.id.to_string())).expect("a member the list resolves to");
    let mut renamed = seed.users.iter().find(|u| u.id == changed.id.to_string()).unwrap().clone();
    renamed.display_name = Some("Renamed While Planning".into());

    fakes.graph.hold_user_reads();
    let out = "changed.json";
    let mut args = plan_args(out, &["--list", ALL_STAFF_MAP.list_name, "--group", ALL_STAFF_MAP.group_name]);
    args.push("-v");
    let child = support::command(dir.path())
        .args(&args)
        .envs(fakes.env().iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    fakes.graph.wait_for_held(1);
    let member_pages = fakes.graph.count(|r| r.is_member_page(ALL_STAFF));
    assert!(member_pages >= 1, "the members were read before the users");
    fakes.graph.add_user(renamed.clone());
    fakes.graph.release_requests();
    let run = child.wait_with_output().unwrap();
    assert!(run.status.success(), "{}", all_output(&run));
    assert!(text(&run.stderr).contains("changed while it was read"), "{}", text(&run.stderr));
    assert!(fakes.graph.count(|r| r.is_member_page(ALL_STAFF)) > member_pages, "the members were read again");

    // The plan says what the second, whole read saw: the renamed user, in the users input and its hash.
    let plan = read_plan(dir.path(), out);
    let mut after = seed.clone();
    let id = renamed.id.clone();
    *after.users.iter_mut().find(|u| u.id == id).unwrap() = renamed;
    let recorded = users_input(&plan);
    assert_eq!(recorded["sha256"], users_sha256(&resolved_users(&after, &addresses)).as_str(), "{recorded}");
    fakes.graph.assert_no_misuse();
    assert_eq!(fakes.graph.count(|r| r.is_write()), 0, "plan never writes");
}
