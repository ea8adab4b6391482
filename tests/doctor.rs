//! `writeback doctor` end to end: the real binary against the fake Graph (and its sign-in endpoint) on
//! 127.0.0.1, in a workspace with the samples. A passing run, runs that fail (exit 32) and name what to fix, and
//! the `--json` shape. doctor never writes to Graph.

mod support;

use std::path::Path;
use std::process::Output;

use serde_json::Value;
use support::fake_az::FakeAz;
use support::fake_graph::{self as fg, FakeGraph, Person, Seed};
use support::fake_politemail::{self as fp, FakePoliteMail};
use support::{code, text, workspace, writeback_with};

const MANAGERS: &str = "4215fbad-0d2a-4fcf-bf8c-01ee7318e9cb";

fn fake(cfg: fg::Config) -> FakeGraph {
    let seed = Seed::from_file(&support::samples().join("fake-tenant.json").to_string_lossy()).unwrap();
    FakeGraph::start_with(seed, cfg)
}

/// A config whose mappings read the members and the users from Graph (the samples' reads them from files).
const LIVE: &str = "[defaults]\nkey = \"keys/demo-planner\"\nsigner = \"planner@contoso.example\"\n\
allowed_signers = \"keys/allowed_signers\"\n\n\
[[sync]]\nname = \"all-staff\"\ngroup = \"b53a97e9-e214-49f9-9d7e-4e4a23c5c243\"\ncontacts = \"politemail-all-staff.csv\"\n\n\
[[sync]]\nname = \"managers\"\ngroup = \"4215fbad-0d2a-4fcf-bf8c-01ee7318e9cb\"\ncontacts = \"politemail-managers.csv\"\n";

fn doctor(dir: &Path, graph: &FakeGraph, args: &[&str]) -> Output {
    std::fs::write(dir.join("live.toml"), LIVE).unwrap();
    let mut all = vec!["doctor", "--config", "live.toml"];
    all.extend_from_slice(args);
    writeback_with(dir, &all, &graph.env())
}

fn checks(out: &Output) -> Vec<Value> {
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)));
    v.as_array().expect("an array of checks").clone()
}

fn find<'a>(checks: &'a [Value], name: &str) -> &'a Value {
    checks.iter().find(|c| c["check"].as_str().is_some_and(|n| n.starts_with(name))).unwrap_or_else(|| {
        panic!("no check '{name}' in {checks:#?}");
    })
}

fn assert_no_writes(graph: &FakeGraph) {
    assert_eq!(graph.count(|r| r.is_write()), 0, "doctor wrote to Graph");
}

#[test]
fn a_planner_set_up_right_passes_every_check() {
    let dir = workspace();
    let graph = fake(fg::Config::default());
    let out = doctor(dir.path(), &graph, &[]);
    let stdout = text(&out.stdout);
    assert_eq!(code(&out), 0, "{stdout}\n{}", text(&out.stderr));
    for row in [
        "config",
        "sign-in",
        "token",
        "permissions",
        "group All Staff",
        "group Managers",
        "PoliteMail",
        "signing key",
        "signer trusted",
        "allowed_signers",
        "clock",
    ] {
        assert!(stdout.contains(row), "{row} missing:\n{stdout}");
    }
    assert!(stdout.contains("auto chose secret"), "{stdout}");
    assert!(stdout.contains("All 11 checks pass."), "{stdout}");
    assert!(!stdout.contains(" fail "), "{stdout}");
    assert_no_writes(&graph);
}

#[test]
fn json_is_an_array_of_check_status_detail_fix() {
    let dir = workspace();
    let graph = fake(fg::Config::default());
    let out = doctor(dir.path(), &graph, &["--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let checks = checks(&out);
    for check in &checks {
        let keys: Vec<&str> = check.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["check", "status", "detail", "fix"], "{check}");
        assert!(["pass", "warn", "fail"].contains(&check["status"].as_str().unwrap()), "{check}");
    }
    let names: Vec<&str> = checks.iter().map(|c| c["check"].as_str().unwrap()).collect();
    let at = |name: &str| names.iter().position(|n| n.starts_with(name)).unwrap();
    assert!(at("config") < at("sign-in") && at("sign-in") < at("permissions"), "{names:?}");
    assert!(at("permissions") < at("group") && at("group") < at("signing key"), "{names:?}");
    assert!(at("signing key") < at("allowed_signers") && at("allowed_signers") < at("clock"), "{names:?}");
    assert!(find(&checks, "token")["detail"].as_str().unwrap().contains(&graph.tenant_id));
    assert_eq!(find(&checks, "clock")["status"], "pass");
}

#[test]
fn a_broken_setup_fails_with_exit_32_and_names_each_fix() {
    let dir = workspace();
    // The planner app lacks User.Read.All; Managers became a dynamic group; the key is readable by others;
    // Graph's clock is 10 minutes ahead; allowed_signers trusts a key for everything.
    let cfg =
        fg::Config { app_roles: vec!["GroupMember.Read.All".into()], date_offset: Some(600), ..Default::default() };
    let mut seed = Seed::from_file(&support::samples().join("fake-tenant.json").to_string_lossy()).unwrap();
    let managers = seed.groups.iter_mut().find(|g| g.id == MANAGERS).unwrap();
    managers.group_types.push("DynamicMembership".into());
    managers.membership_rule = Some("user.department -eq \"Sales\"".into());
    let graph = FakeGraph::start_with(seed, cfg);
    use std::os::unix::fs::PermissionsExt;
    let key = dir.path().join("keys/demo-planner");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let signers = dir.path().join("keys/allowed_signers");
    let mut text_of = std::fs::read_to_string(&signers).unwrap();
    text_of.push_str(
        "anyone@contoso.example ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB4lbaf3Ap2R4AqvLeU/ekNdvXIXoR3rzUNJSdWANa1C\n",
    );
    std::fs::write(&signers, text_of).unwrap();

    let out = doctor(dir.path(), &graph, &["--json"]);
    assert_eq!(code(&out), 32, "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("error: ") && text(&out.stderr).contains("checks failed"));
    let checks = checks(&out);
    let permissions = find(&checks, "permissions");
    assert_eq!(permissions["status"], "fail");
    assert!(permissions["detail"].as_str().unwrap().contains("User.Read.All"), "{permissions}");
    let managers = find(&checks, "group Managers");
    assert_eq!(managers["status"], "fail");
    assert!(managers["detail"].as_str().unwrap().contains("dynamic membership"), "{managers}");
    let key = find(&checks, "signing key");
    assert_eq!(key["status"], "fail");
    assert!(key["fix"].as_str().unwrap().starts_with("chmod 600"), "{key}");
    let everything = find(&checks, "allowed_signers namespaces");
    assert_eq!(everything["status"], "fail");
    assert!(everything["detail"].as_str().unwrap().contains("anyone@contoso.example"), "{everything}");
    let clock = find(&checks, "clock");
    assert_eq!(clock["status"], "warn");
    assert!(clock["detail"].as_str().unwrap().contains("behind"), "{clock}");
    assert_no_writes(&graph);

    // The table says the same, with the fix column, and still exits 32.
    let out = doctor(dir.path(), &graph, &[]);
    assert_eq!(code(&out), 32);
    let table = text(&out.stdout);
    assert!(table.contains("Fix") && table.contains("chmod 600") && table.contains("check(s) fail"), "{table}");
}

#[test]
fn an_admin_without_a_way_to_sign_in_fails_and_hears_of_a_new_ledger() {
    let dir = workspace();
    let graph = fake(fg::Config::default());
    let out = writeback_with(
        dir.path(),
        &[
            "doctor",
            "--role",
            "admin",
            "--key",
            "keys/demo-admin",
            "--allowed-signers",
            "keys/allowed_signers",
            "--json",
        ],
        &[("WRITEBACK_GRAPH_URL", graph.base_url.clone()), ("WRITEBACK_LOGIN_URL", graph.login_url.clone())],
    );
    assert_eq!(code(&out), 32, "{}", text(&out.stderr));
    let checks = checks(&out);
    let sign_in = find(&checks, "sign-in");
    assert_eq!(sign_in["status"], "fail");
    assert!(sign_in["detail"].as_str().unwrap().contains("no way to sign in"), "{sign_in}");
    assert_eq!(find(&checks, "signer trusted")["status"], "pass");
    let ledger = find(&checks, "ledger");
    assert_eq!(ledger["status"], "warn", "{ledger}");
    assert!(ledger["fix"].as_str().unwrap().contains("persistent"), "{ledger}");
    assert_eq!(graph.count(|r| !r.is_token()), 0, "nothing reached Graph");
}

#[cfg(unix)]
#[test]
fn a_person_without_an_active_role_is_warned_about_pim_and_scoped_roles() {
    let dir = workspace();
    let graph = fake(fg::Config::default());
    let scopes = ["GroupMember.ReadWrite.All", "User.Read.All"];
    let run = |person: &Person| {
        let az = FakeAz::new(&graph.issue_user_token(person));
        let env = vec![
            ("PATH", az.path_with(&support::path_without_az()).to_string_lossy().into_owned()),
            ("WRITEBACK_GRAPH_URL", graph.base_url.clone()),
            ("WRITEBACK_LOGIN_URL", graph.login_url.clone()),
        ];
        std::fs::write(dir.path().join("live.toml"), LIVE).unwrap();
        let args = ["doctor", "--role", "admin", "--config", "live.toml", "--key", "keys/demo-admin", "--json"];
        let out = writeback_with(dir.path(), &args, &env);
        assert_eq!(code(&out), 0, "{}\n{}", text(&out.stdout), text(&out.stderr));
        checks(&out)
    };
    let nobody = Person::new("0a0b0c0d-1111-4222-8333-444455556666", "pat@contoso.example", &scopes, &[]);
    let checks = run(&nobody);
    assert!(find(&checks, "sign-in")["detail"].as_str().unwrap().contains("azure-cli"));
    assert!(find(&checks, "token")["detail"].as_str().unwrap().contains("person pat@contoso.example"));
    let roles = find(&checks, "directory roles");
    assert_eq!(roles["status"], "warn", "{roles}");
    let detail = roles["detail"].as_str().unwrap();
    assert!(detail.contains("administrative unit") && detail.contains("PIM"), "{roles}");
    assert!(roles["fix"].as_str().unwrap().contains("activate"), "{roles}");
    assert_eq!(find(&checks, "clock")["status"], "pass");

    let admin = Person::new(
        "0a0b0c0d-1111-4222-8333-444455556667",
        "gia@contoso.example",
        &scopes,
        &[fg::GROUPS_ADMINISTRATOR],
    );
    let checks = run(&admin);
    let roles = find(&checks, "directory roles");
    assert_eq!(roles["status"], "pass", "{roles}");
    assert!(roles["detail"].as_str().unwrap().contains("Groups Administrator"), "{roles}");
    assert_no_writes(&graph);
}

#[test]
fn a_planner_working_from_exports_needs_no_sign_in() {
    // The samples' config reads every group's members and the users from Entra exports: no Graph at all.
    let dir = workspace();
    let out = writeback_with(dir.path(), &["doctor", "--json"], &[]);
    assert_eq!(code(&out), 0, "{}\n{}", text(&out.stdout), text(&out.stderr));
    let checks = checks(&out);
    let sign_in = find(&checks, "sign-in");
    assert_eq!(sign_in["status"], "pass");
    assert!(sign_in["detail"].as_str().unwrap().contains("not needed"), "{sign_in}");
    assert!(checks.iter().all(|c| !c["check"].as_str().unwrap().starts_with("group")), "{checks:#?}");
    assert_eq!(find(&checks, "clock")["status"], "pass");
    assert_eq!(find(&checks, "signer trusted")["status"], "pass");
}

#[test]
fn a_planner_reading_politemail_finds_each_list_and_hears_of_refused_credentials() {
    let dir = workspace();
    let graph = fake(fg::Config::default());
    let pm = FakePoliteMail::start(
        fp::Seed::from_file(&support::samples().join("fake-politemail.json").to_string_lossy()).unwrap(),
    );
    let config = "[defaults]\nkey = \"keys/demo-planner\"\nallowed_signers = \"keys/allowed_signers\"\n\n\
                  [[sync]]\ngroup = \"b53a97e9-e214-49f9-9d7e-4e4a23c5c243\"\nlist = \"All Staff\"\n\n\
                  [[sync]]\ngroup = \"4215fbad-0d2a-4fcf-bf8c-01ee7318e9cb\"\nlist = \"Board\"\n";
    std::fs::write(dir.path().join("pm.toml"), config).unwrap();
    let mut env = graph.env();
    env.extend(pm.env());
    let out = writeback_with(dir.path(), &["doctor", "--config", "pm.toml", "--json"], &env);
    assert_eq!(code(&out), 32, "{}", text(&out.stderr));
    let found = checks(&out);
    assert_eq!(find(&found, "PoliteMail")["status"], "pass", "{found:#?}");
    assert_eq!(find(&found, "list All Staff")["status"], "pass");
    let board = find(&found, "list Board");
    assert_eq!(board["status"], "fail");
    assert!(board["detail"].as_str().unwrap().contains("Board"), "{board}");

    let wrong: Vec<(&str, String)> = env
        .iter()
        .map(|(k, v)| (*k, if *k == "POLITEMAIL_PASSWORD" { "wrong".to_string() } else { v.clone() }))
        .collect();
    let out = writeback_with(dir.path(), &["doctor", "--config", "pm.toml", "--json"], &wrong);
    assert_eq!(code(&out), 32);
    let checks = checks(&out);
    let politemail = find(&checks, "PoliteMail");
    assert_eq!(politemail["status"], "fail", "{politemail}");
    assert!(politemail["detail"].as_str().unwrap().contains("credentials refused"), "{politemail}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&pm.env()[2].1), "the password is never shown");
}
