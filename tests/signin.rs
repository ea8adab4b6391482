//! Every sign-in kind, end to end: the real binary plans from the fake Graph and applies the plan, signing in with
//! each kind against the fake sign-in endpoints on 127.0.0.1 (client credentials with a secret, a certificate or a
//! federated token; the device-code flow; App Service and VM style managed identity) and a fake `az` first on
//! `PATH`. Delegated tokens are enforced by the fake as Graph does: the scope, and for writes the person's
//! directory role or group ownership.
//!
//! No test reaches the real metadata address or the internet: the managed identity tests always point
//! `IDENTITY_ENDPOINT` or `WRITEBACK_IMDS_URL` at the fake, and the commands run with a cleared environment.

mod support;

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use support::fake_az::FakeAz;
use support::fake_graph::{self as fg, DevicePoll, FakeGraph, Federated, ManagedIdentity, Person, Principal, Seed};
use support::{code, text};

const ALL_STAFF: &str = "b53a97e9-e214-49f9-9d7e-4e4a23c5c243";
const ADA: &str = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9";
const ADA_UPN: &str = "ada.admin@contoso.example";

/// A workspace with the samples (without `writeback.toml`, so members and users come from Graph) and a fake
/// Graph seeded with the sample tenant.
struct Setup {
    dir: tempfile::TempDir,
    graph: FakeGraph,
}

fn setup(cfg: fg::Config) -> Setup {
    setup_with(sample_seed(), cfg)
}

fn sample_seed() -> Seed {
    Seed::from_file(&support::samples().join("fake-tenant.json").to_string_lossy()).unwrap()
}

fn setup_with(seed: Seed, cfg: fg::Config) -> Setup {
    let dir = support::workspace();
    std::fs::remove_file(dir.path().join("writeback.toml")).unwrap();
    Setup { dir, graph: FakeGraph::start_with(seed, cfg) }
}

/// Runs the binary with only `env` set (and `path` as `PATH`), so nothing of the developer's shell leaks in.
fn run(dir: &Path, env: &[(&str, String)], path: Option<&OsString>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_writeback"));
    cmd.env_clear();
    support::isolate(&mut cmd)
        .env("PATH", path.cloned().unwrap_or_else(support::path_without_az))
        .env("WRITEBACK_RETRY_BASE_MS", "5")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs")
}

const PLAN: &[&str] = &[
    "plan",
    "--contacts",
    "politemail-all-staff.csv",
    "--group",
    ALL_STAFF,
    "--key",
    "keys/demo-planner",
    "--keep",
    "keep.txt",
    "--out",
    "plan.json",
];
const APPLY: &[&str] =
    &["apply", "plan.json", "--allowed-signers", "keys/allowed_signers", "--yes", "--key", "keys/demo-admin"];

fn ok(out: &Output, what: &str) {
    assert_eq!(out.status.code(), Some(0), "{what}\nstdout:\n{}\nstderr:\n{}", text(&out.stdout), text(&out.stderr));
}

impl Setup {
    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The fake's URLs plus `more`.
    fn env(&self, more: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
        let mut env = self.graph.endpoints_env();
        env.extend(more.iter().cloned());
        env
    }

    /// Plans, then applies, with `env` (and `path`), and checks the group ends as the plan wants.
    fn plan_and_apply(&self, env: &[(&str, String)], path: Option<&OsString>) -> (Output, Output) {
        let planned = run(self.path(), env, path, PLAN);
        ok(&planned, "plan");
        let plan: Value = serde_json::from_slice(&std::fs::read(self.path().join("plan.json")).unwrap()).unwrap();
        let changes = plan["groups"][0]["changes"].as_array().unwrap().clone();
        assert!(!changes.is_empty(), "the sample plan has changes");
        let applied = run(self.path(), env, path, APPLY);
        ok(&applied, "apply");
        for change in &changes {
            let user = change["user_id"].as_str().unwrap();
            let member = self.graph.is_member(ALL_STAFF, user);
            assert_eq!(member, change["action"] == "add", "{change}");
        }
        (planned, applied)
    }

    fn writes(&self) -> usize {
        self.graph.count(|r| r.is_write())
    }

    fn graph_requests(&self) -> usize {
        self.graph.count(|r| !r.is_token())
    }

    fn receipt(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.path().join("plan.json.receipt.json")).unwrap()).unwrap()
    }

    /// The Entra actor of the plan, of the receipt and of the journal's start line: each is `kind` `id` signed in
    /// with `auth`, in the fake's tenant.
    fn assert_actor(&self, kind: &str, id: &str, auth: &str) -> Value {
        let plan: Value = serde_json::from_slice(&std::fs::read(self.path().join("plan.json")).unwrap()).unwrap();
        let journal = std::fs::read_to_string(self.path().join("plan.json.journal.jsonl")).unwrap();
        let started: Value = journal
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find(|l| l["kind"] == "apply-started")
            .expect("an apply-started line");
        for (what, actor) in [
            ("plan", &plan["entra_actor"]),
            ("receipt", &self.receipt()["entra_actor"]),
            ("journal", &started["entra_actor"]),
        ] {
            assert_eq!(actor["type"], kind, "{what}: {actor}");
            assert_eq!(actor["id"], id, "{what}: {actor}");
            assert_eq!(actor["auth"], auth, "{what}: {actor}");
            assert_eq!(actor["tenant_id"], self.graph.tenant_id.as_str(), "{what}: {actor}");
        }
        assert_eq!(plan["format_version"], "1.1");
        assert_eq!(self.receipt()["format_version"], "1.2");
        plan["entra_actor"].clone()
    }
}

/// A person who may change All Staff through the Azure CLI: az's usual scopes and Groups Administrator.
fn ada() -> Person {
    Person::new(
        ADA,
        ADA_UPN,
        &["Directory.AccessAsUser.All", "Group.ReadWrite.All", "User.Read.All"],
        &[fg::GROUPS_ADMINISTRATOR],
    )
}

fn assert_no_secret(out: &Output, secrets: &[&str]) {
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    for secret in secrets {
        assert!(!all.contains(secret), "a secret reached the output: {}…", &secret[..secret.len().min(12)]);
    }
    assert!(!all.contains("eyJ0eXAi"), "a token reached the output");
}

// ----------------------------------------------------------------------------------------------------------
// Application kinds.
// ----------------------------------------------------------------------------------------------------------

#[test]
fn token_kind() {
    let s = setup(fg::Config::default());
    let token = s.graph.issue_token();
    let env = s.env(&[("WRITEBACK_ACCESS_TOKEN", token.clone())]);
    let (planned, applied) = s.plan_and_apply(&env, None);
    assert_no_secret(&planned, &[&token]);
    assert_no_secret(&applied, &[&token]);
    assert_eq!(s.graph.count(|r| r.is_token()), 0, "a ready token needs no sign-in");
    s.assert_actor("application", &s.graph.client_id, "token");
}

#[test]
fn secret_kind() {
    let s = setup(fg::Config::default());
    let mut env = s.graph.env();
    env.push(("WRITEBACK_AUTH", "secret".into()));
    s.plan_and_apply(&env, None);
    let actor = s.assert_actor("application", &s.graph.client_id, "secret");
    assert_eq!(actor["name"], "writeback (fake app)");
    let grants: Vec<String> = s
        .graph
        .requests()
        .iter()
        .filter(|r| r.is_token())
        .map(|r| r.body.clone().unwrap()["grant_type"].to_string())
        .collect();
    assert!(!grants.is_empty() && grants.iter().all(|g| g == "\"client_credentials\""), "{grants:?}");
    // The resource is the cloud's, not the test server's.
    let scope = s.graph.requests().iter().find(|r| r.is_token()).unwrap().body.clone().unwrap()["scope"].clone();
    assert_eq!(scope, "https://graph.microsoft.com/.default");
}

#[test]
fn certificate_kind() {
    let pem_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/signin/testdata/test-cert-and-key.pem");
    let key =
        writeback::signin::certificate::parse_certificate_pem(&std::fs::read_to_string(&pem_path).unwrap()).unwrap();
    let s = setup(fg::Config { assertion_public_key: Some(key.public_key_der()), ..fg::Config::default() });
    let env = s.env(&[
        ("AZURE_TENANT_ID", s.graph.tenant_id.clone()),
        ("AZURE_CLIENT_ID", s.graph.client_id.clone()),
        ("AZURE_CLIENT_CERTIFICATE_PATH", pem_path.display().to_string()),
    ]);
    s.plan_and_apply(&env, None);
    s.assert_actor("application", &s.graph.client_id, "certificate");
    let token_request = s.graph.requests().into_iter().find(|r| r.is_token()).unwrap().body.unwrap();
    assert_eq!(token_request["client_assertion_type"], "urn:ietf:params:oauth:client-assertion-type:jwt-bearer");
    assert!(token_request.get("client_secret").is_none());
}

fn federated_setup() -> (Setup, tempfile::TempDir, Vec<(&'static str, String)>, String) {
    let federated = Federated::github("contoso/writeback");
    let token = federated.token(600);
    let s = setup(fg::Config { federated: Some(federated), ..fg::Config::default() });
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("federated-token");
    std::fs::write(&file, &token).unwrap();
    let env = s.env(&[
        ("AZURE_TENANT_ID", s.graph.tenant_id.clone()),
        ("AZURE_CLIENT_ID", s.graph.client_id.clone()),
        ("AZURE_FEDERATED_TOKEN_FILE", file.display().to_string()),
    ]);
    (s, files, env, token)
}

#[test]
fn workload_identity_kind() {
    let (s, _files, env, token) = federated_setup();
    let (planned, applied) = s.plan_and_apply(&env, None);
    assert_no_secret(&planned, &[&token]);
    assert_no_secret(&applied, &[&token]);
    let grants = s.graph.requests().into_iter().filter(|r| r.is_token()).count();
    assert!(grants >= 2, "one grant per command");
    s.assert_actor("application", &s.graph.client_id, "workload-identity");
}

#[test]
fn a_federated_token_the_app_does_not_trust_is_refused_with_zero_writes() {
    let (s, files, env, _) = federated_setup();
    ok(&run(s.path(), &env, None, PLAN), "plan");
    let other = Federated { subject: "repo:mallory/fork:ref:refs/heads/main".into(), ..Federated::github("x/y") };
    let forged = other.token(600);
    std::fs::write(files.path().join("federated-token"), &forged).unwrap();
    let out = run(s.path(), &env, None, APPLY);
    assert_eq!(code(&out), 4, "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("AADSTS70021") && err.contains("federated credential"), "{err}");
    assert_no_secret(&out, &[&forged]);
    assert_eq!(s.writes(), 0);
}

#[test]
fn managed_identity_app_service_style() {
    let s = setup(fg::Config { managed_identity: Some(ManagedIdentity::default()), ..fg::Config::default() });
    let env = s.env(&s.graph.managed_identity_env());
    let header = env.iter().find(|(k, _)| *k == "IDENTITY_HEADER").unwrap().1.clone();
    let (planned, applied) = s.plan_and_apply(&env, None);
    assert_no_secret(&planned, &[&header]);
    assert_no_secret(&applied, &[&header]);
    let asked: Vec<_> = s.graph.requests().into_iter().filter(|r| r.path_only() == "/msi/token").collect();
    assert!(!asked.is_empty());
    assert!(asked.iter().all(|r| r.q("resource").as_deref() == Some("https://graph.microsoft.com")));
    assert!(s.graph.principals().iter().all(|p| matches!(p, Principal::App { name, .. } if name.contains("managed"))));
    let actor = s.assert_actor("application", &ManagedIdentity::default().client_id, "managed-identity");
    assert_eq!(actor["name"], "writeback host (managed identity)");
}

#[test]
fn managed_identity_vm_style_user_assigned() {
    let mi = ManagedIdentity::default();
    let s = setup(fg::Config { managed_identity: Some(mi.clone()), ..fg::Config::default() });
    let env = s.env(&[
        ("WRITEBACK_IMDS_URL", s.graph.login_url.clone()),
        ("AZURE_CLIENT_ID", mi.client_id.clone()),
        ("WRITEBACK_AUTH", "managed-identity".into()),
    ]);
    s.plan_and_apply(&env, None);
    let asked: Vec<_> =
        s.graph.requests().into_iter().filter(|r| r.path_only() == "/metadata/identity/oauth2/token").collect();
    assert!(!asked.is_empty());
    assert!(asked.iter().all(|r| r.q("client_id").as_deref() == Some(mi.client_id.as_str())));
    assert!(asked.iter().all(|r| r.header("authorization").is_none()));
    s.assert_actor("application", &mi.client_id, "managed-identity");
}

// ----------------------------------------------------------------------------------------------------------
// A person signs in: the Azure CLI and the device code.
// ----------------------------------------------------------------------------------------------------------

#[cfg(unix)]
#[test]
fn azure_cli_kind_with_a_delegated_token() {
    let s = setup(fg::Config::default());
    let az = FakeAz::new(&s.graph.issue_user_token(&ada()));
    let path = az.path_with(&support::path_without_az());
    let env = s.env(&[("AZURE_TENANT_ID", s.graph.tenant_id.clone())]);
    s.plan_and_apply(&env, Some(&path));
    let calls = az.calls();
    assert_eq!(calls.len(), 2, "one az call per command: {calls:?}");
    let expected = format!(
        "account get-access-token --resource https://graph.microsoft.com --tenant {} --output json",
        s.graph.tenant_id
    );
    assert!(calls.iter().all(|c| *c == expected), "{calls:?}");
    assert_eq!(s.graph.count(|r| r.is_token()), 0);
    let actor = s.assert_actor("user", ADA, "azure-cli");
    assert_eq!(actor["name"], ADA_UPN);
}

#[cfg(unix)]
#[test]
fn an_azure_cli_token_is_fetched_again_during_a_long_apply() {
    let s = setup(fg::Config { token_max_uses: Some(3), ..fg::Config::default() });
    let az = FakeAz::new(&s.graph.issue_user_token(&ada()));
    for call in 1..=12 {
        az.answer(Some(call), &s.graph.issue_user_token(&ada()));
    }
    let path = az.path_with(&support::path_without_az());
    let env = s.env(&[]);
    s.plan_and_apply(&env, Some(&path));
    assert!(az.calls().len() >= 3, "az was asked again when its token stopped working: {:?}", az.calls());
}

#[cfg(unix)]
#[test]
fn auto_without_a_signed_in_azure_cli_lists_every_kind() {
    let s = setup(fg::Config::default());
    let az = FakeAz::new("unused");
    az.fail("ERROR: Please run 'az login' to setup account.\n");
    let path = az.path_with(&support::path_without_az());
    let out = run(s.path(), &s.env(&[]), Some(&path), PLAN);
    assert_eq!(code(&out), 3, "{}", text(&out.stderr));
    let err = text(&out.stderr);
    for line in [
        "token: WRITEBACK_ACCESS_TOKEN is not set",
        "secret: AZURE_CLIENT_SECRET is not set",
        "certificate: AZURE_CLIENT_CERTIFICATE_PATH is not set",
        "workload-identity: AZURE_FEDERATED_TOKEN_FILE is not set",
        "managed-identity: neither IDENTITY_ENDPOINT nor WRITEBACK_IMDS_URL is set",
        "azure-cli: the Azure CLI is not signed in",
        "device-code: never started by auto",
    ] {
        assert!(err.contains(line), "missing '{line}' in:\n{err}");
    }
    assert!(err.contains("run `az login`"), "{err}");
    assert_eq!(s.graph.requests().len(), 0, "nothing was sent anywhere");
    assert!(!s.path().join("plan.json").exists());
}

#[test]
fn nothing_set_up_sends_nothing_and_never_probes_the_metadata_address() {
    let s = setup(fg::Config::default());
    let out = run(s.path(), &s.env(&[]), None, PLAN);
    assert_eq!(code(&out), 3, "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("(on an Azure VM, pass --auth managed-identity)"), "{err}");
    assert!(err.contains("azure-cli: `az` is not on PATH"), "{err}");
    assert_eq!(s.graph.requests().len(), 0);
    // An explicit kind names what it needs.
    let out = run(s.path(), &s.env(&[]), None, &[PLAN, &["--auth", "workload-identity"]].concat());
    assert_eq!(code(&out), 3);
    assert!(text(&out.stderr).contains("AZURE_FEDERATED_TOKEN_FILE"), "{}", text(&out.stderr));
}

fn device_env(s: &Setup, cfg_client: &str) -> Vec<(&'static str, String)> {
    s.env(&[
        ("AZURE_CLIENT_ID", cfg_client.to_string()),
        ("AZURE_TENANT_ID", s.graph.tenant_id.clone()),
        ("WRITEBACK_AUTH", "device-code".into()),
    ])
}

#[test]
fn device_code_kind() {
    let cfg = fg::Config {
        device_user: Some(ada()),
        device_polls: vec![DevicePoll::Pending, DevicePoll::Pending],
        ..fg::Config::default()
    };
    let client = cfg.public_client_id.clone();
    let s = setup(cfg);
    let env = device_env(&s, &client);
    let (planned, applied) = s.plan_and_apply(&env, None);
    for out in [&planned, &applied] {
        let err = text(&out.stderr);
        assert!(err.contains("https://microsoft.com/devicelogin") && err.contains("enter the code"), "{err}");
        assert!(!err.contains("fake-device-code") && !err.contains("fake-refresh"), "{err}");
        assert_no_secret(out, &[]);
    }
    let polls = s.graph.count(|r| r.is_token() && r.body.as_ref().is_some_and(|b| b["device_code"] == "<redacted>"));
    assert_eq!(polls, 6, "three polls per sign-in");
    let actor = s.assert_actor("user", ADA, "device-code");
    assert_eq!(actor["name"], ADA_UPN);
}

#[test]
fn device_code_slow_down_and_expiry() {
    let cfg =
        fg::Config { device_user: Some(ada()), device_polls: vec![DevicePoll::SlowDown], ..fg::Config::default() };
    let client = cfg.public_client_id.clone();
    let s = setup(cfg);
    ok(&run(s.path(), &device_env(&s, &client), None, PLAN), "plan after slow_down");

    let cfg = fg::Config {
        device_user: Some(ada()),
        device_polls: vec![DevicePoll::Pending, DevicePoll::Expired],
        ..fg::Config::default()
    };
    let s = setup(cfg);
    let out = run(s.path(), &device_env(&s, &client), None, PLAN);
    assert_eq!(code(&out), 4, "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("the code expired before anyone signed in"), "{}", text(&out.stderr));
    assert_eq!(s.graph_requests(), 0);
}

// ----------------------------------------------------------------------------------------------------------
// Delegated tokens: Graph enforces, writeback explains.
// ----------------------------------------------------------------------------------------------------------

#[cfg(unix)]
#[test]
fn a_person_without_a_role_or_ownership_is_told_which_role_is_missing() {
    let s = setup(fg::Config::default());
    let nobody = Person::new(ADA, ADA_UPN, &["GroupMember.ReadWrite.All", "User.Read.All"], &[]);
    let az = FakeAz::new(&s.graph.issue_user_token(&nobody));
    let path = az.path_with(&support::path_without_az());
    let env = s.env(&[]);
    ok(&run(s.path(), &env, Some(&path), PLAN), "plan");
    let out = run(s.path(), &env, Some(&path), APPLY);
    assert_eq!(code(&out), 25, "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("403") && err.contains("own the group") && err.contains("Groups Administrator"), "{err}");
    assert_eq!(s.graph.count(|r| r.is_write() && (200..300).contains(&r.status)), 0);

    // The same person, as an owner of the group, may.
    let mut seed = sample_seed();
    seed.groups.iter_mut().find(|g| g.id == ALL_STAFF).unwrap().owners.push(ADA.into());
    let s = setup_with(seed, fg::Config::default());
    let az = FakeAz::new(&s.graph.issue_user_token(&nobody));
    let path = az.path_with(&support::path_without_az());
    s.plan_and_apply(&s.env(&[]), Some(&path));
}

#[cfg(unix)]
#[test]
fn a_planner_without_user_read_all_is_told_the_missing_scope() {
    let s = setup(fg::Config::default());
    let basic = Person::new(ADA, ADA_UPN, &["GroupMember.Read.All", "User.ReadBasic.All"], &[]);
    let az = FakeAz::new(&s.graph.issue_user_token(&basic));
    let path = az.path_with(&support::path_without_az());
    let out = run(s.path(), &s.env(&[]), Some(&path), PLAN);
    assert_eq!(code(&out), 4, "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("delegated permission User.Read.All") && err.contains("User.ReadBasic.All"), "{err}");
}

#[cfg(unix)]
#[test]
fn a_delegated_apply_batches_survives_throttling_and_resumes() {
    let mut seed = Seed::new();
    let users = seed.add_users(200);
    let group = seed.add_group("Staff", &users[..20]);
    let contacts: String = std::iter::once("Email".to_string())
        .chain((1..=150).map(|i| format!("user{i}@contoso.example")))
        .collect::<Vec<_>>()
        .join("\n");
    let faults = fg::Faults { throttle_every: Some(7), expire_tokens_after_batches: Some(3), ..fg::Faults::default() };
    let s = setup_with(seed, fg::Config { faults, ..fg::Config::default() });
    std::fs::write(s.path().join("staff.csv"), contacts + "\n").unwrap();
    let az = FakeAz::new(&s.graph.issue_user_token(&ada()));
    let path = az.path_with(&support::path_without_az());
    let env = s.env(&[]);
    let plan =
        ["plan", "--contacts", "staff.csv", "--group", &group, "--key", "keys/demo-planner", "--out", "plan.json"];
    ok(&run(s.path(), &env, Some(&path), &plan), "plan");
    let apply = [APPLY, &["--patches-per-batch", "1", "--concurrency", "1"]].concat();
    // The session is revoked after three $batch requests: the run stops, every outcome so far journaled.
    let first = run(s.path(), &env, Some(&path), &apply);
    assert_eq!(code(&first), 4, "{}", text(&first.stderr));
    assert!(text(&first.stderr).contains("Run the same command again"), "{}", text(&first.stderr));
    let done_first = s.graph.members(&group).len();
    assert!(done_first > 20 && done_first < 150, "{done_first} members after the first run");
    // The person signs in again; the rerun finishes what is left.
    az.answer(None, &s.graph.issue_user_token(&ada()));
    let second = run(s.path(), &env, Some(&path), &apply);
    ok(&second, "resumed apply");
    assert!(text(&second.stdout).contains("Resuming"), "{}", text(&second.stdout));
    assert_eq!(s.graph.members(&group).len(), 150);
    assert!(s.graph.count(|r| r.status == 429) > 0, "the fake throttled");
    assert_eq!(s.receipt()["runs"], 2);
}

// ----------------------------------------------------------------------------------------------------------
// Who acted: the Entra actor beside the SSH signer.
// ----------------------------------------------------------------------------------------------------------

fn sign(path: &Path, key: &Path, namespace: &str) {
    let key = writeback::trust::SigningKey::load(key).unwrap();
    let sig = key.sign(namespace, &std::fs::read(path).unwrap()).unwrap();
    std::fs::write(format!("{}.sig", path.display()), sig).unwrap();
}

#[cfg(unix)]
#[test]
fn show_and_audit_put_the_entra_actor_beside_the_signer_and_flag_another_tenant() {
    let s = setup(fg::Config::default());
    let az = FakeAz::new(&s.graph.issue_user_token(&ada()));
    let path = az.path_with(&support::path_without_az());
    s.plan_and_apply(&s.env(&[]), Some(&path));
    let show = run(s.path(), &[], None, &["show", "plan.json", "--allowed-signers", "keys/allowed_signers"]);
    ok(&show, "show");
    let shown = text(&show.stdout);
    let signed = shown.lines().position(|l| l.contains("Signed by  planner@contoso.example")).expect(&shown);
    let entra = shown.lines().position(|l| l.contains("Entra      user ada.admin@contoso.example")).expect(&shown);
    assert!(entra > signed && entra <= signed + 2, "{shown}");
    assert!(shown.contains(&format!("Entra id   {ADA}")), "{shown}");

    let archive = s.path().join("archive");
    std::fs::create_dir(&archive).unwrap();
    for name in [
        "plan.json",
        "plan.json.sig",
        "plan.json.receipt.json",
        "plan.json.receipt.json.sig",
        "plan.json.journal.jsonl",
    ] {
        std::fs::copy(s.path().join(name), archive.join(name)).unwrap();
    }
    let audit = ["audit", "archive", "--allowed-signers", "keys/allowed_signers"];
    let out = run(s.path(), &[("COLUMNS", "200".into())], None, &audit);
    ok(&out, "audit of a clean archive");
    let table = text(&out.stdout);
    assert!(
        table.contains("planner@contoso.example") && table.contains("user ada.admin@contoso.example (azure-cli)"),
        "{table}"
    );
    assert!(table.contains("admin@contoso.example"), "{table}");
    let json = run(s.path(), &[], None, &[&audit[..], &["--json"]].concat());
    let v: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["plans"][0]["signer_entra"]["id"], ADA);
    assert_eq!(v["plans"][0]["applied_by_entra"]["type"], "user");

    // The same actor, but the plan and the receipt each name another tenant than the one it signed in to.
    let other = "99999999-9999-4999-8999-999999999999";
    for (name, key, namespace) in [
        ("plan.json", "keys/demo-planner", "writeback-plan"),
        ("plan.json.receipt.json", "keys/demo-admin", "writeback-receipt"),
    ] {
        let file = archive.join(name);
        let mut value: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        value["entra_actor"]["tenant_id"] = Value::String(other.into());
        let mut bytes = serde_json::to_vec_pretty(&value).unwrap();
        bytes.push(b'\n');
        std::fs::write(&file, bytes).unwrap();
        sign(&file, &s.path().join(key), namespace);
    }
    let out = run(s.path(), &[], None, &audit);
    assert_eq!(code(&out), 31, "{}{}", text(&out.stdout), text(&out.stderr));
    let found = text(&out.stdout);
    for what in ["the plan names tenant", "the receipt names tenant"] {
        assert!(found.contains(what) && found.contains(&format!("signed in to tenant {other}")), "{what}: {found}");
    }
}

#[cfg(unix)]
#[test]
fn a_csv_plan_records_its_planner_in_entra_actor_rows() {
    let s = setup(fg::Config::default());
    let az = FakeAz::new(&s.graph.issue_user_token(&ada()));
    let path = az.path_with(&support::path_without_az());
    let args = [&PLAN[..PLAN.len() - 1], &["plan.csv", "--format", "csv"]].concat();
    ok(&run(s.path(), &s.env(&[]), Some(&path), &args), "plan");
    let csv = std::fs::read_to_string(s.path().join("plan.csv")).unwrap();
    assert!(csv.starts_with("#writeback-plan,1.1\r\n"), "{csv}");
    for row in [
        "#entra_actor.type,user".to_string(),
        format!("#entra_actor.id,{ADA}"),
        format!("#entra_actor.name,{ADA_UPN}"),
        format!("#entra_actor.tenant_id,{}", s.graph.tenant_id),
        "#entra_actor.auth,azure-cli".to_string(),
    ] {
        assert!(csv.contains(&format!("{row}\r\n")), "{row} missing:\n{csv}");
    }
    // Offline, there is no actor to record.
    let offline = ["plan", "--config", "writeback.toml", "--out", "offline.csv", "--format", "csv"];
    std::fs::copy(support::samples().join("writeback.toml"), s.path().join("writeback.toml")).unwrap();
    ok(&run(s.path(), &[], None, &offline), "offline plan");
    assert!(!std::fs::read_to_string(s.path().join("offline.csv")).unwrap().contains("#entra_actor"));
}

#[test]
fn an_entra_actor_hidden_in_a_1_0_plan_is_refused_with_zero_writes() {
    let s = setup(fg::Config::default());
    let env = s.graph.env();
    ok(&run(s.path(), &env, None, PLAN), "plan");
    let file = s.path().join("plan.json");
    let text_1_1 = std::fs::read_to_string(&file).unwrap();
    assert!(text_1_1.contains("\"entra_actor\""));
    std::fs::write(&file, text_1_1.replacen("\"format_version\": \"1.1\"", "\"format_version\": \"1.0\"", 1)).unwrap();
    sign(&file, &s.path().join("keys/demo-planner"), "writeback-plan");
    let out = run(s.path(), &env, None, APPLY);
    assert_eq!(code(&out), 13, "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("unknown field 'entra_actor'"), "{}", text(&out.stderr));
    assert_eq!(s.writes(), 0);
}

// ----------------------------------------------------------------------------------------------------------
// Unattended planning: `plan --detailed-exitcode`.
// ----------------------------------------------------------------------------------------------------------

#[test]
fn detailed_exitcode_tells_a_nightly_planner_whether_there_is_anything_to_apply() {
    let s = setup(fg::Config::default());
    let env = s.graph.env();
    let nightly = |out: &'static str, more: &[&'static str]| {
        [&PLAN[..PLAN.len() - 1], &[out, "--detailed-exitcode"], more].concat()
    };
    let first = run(s.path(), &env, None, &nightly("plan.json", &[]));
    assert_eq!(code(&first), 40, "a plan with changes\n{}", text(&first.stderr));
    assert!(!text(&first.stderr).contains("error"), "{}", text(&first.stderr));
    assert!(text(&first.stdout).contains("Wrote plan.json"), "{}", text(&first.stdout));
    assert!(s.path().join("plan.json").is_file());
    ok(&run(s.path(), &env, None, APPLY), "apply");

    // Every change is in effect now: the next night's plan has nothing to hand over, and writes nothing.
    let second = run(s.path(), &env, None, &nightly("again.json", &[]));
    ok(&second, "a plan without changes");
    assert!(text(&second.stdout).contains("No changes"), "{}", text(&second.stdout));
    assert!(!text(&second.stderr).contains("error"), "{}", text(&second.stderr));
    let dir: Vec<String> =
        std::fs::read_dir(s.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!dir.iter().any(|name| name.starts_with("again")), "{dir:?}");
    let json = run(s.path(), &env, None, &nightly("again.json", &["--json"]));
    ok(&json, "--json without changes");
    let summary: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(summary["written"], false);
    assert!(summary["plan"].is_null(), "{summary}");
    assert!(!s.path().join("again.json").exists());
    // Without the flag, the same run writes its (empty) plan and exits 0, as before.
    ok(&run(s.path(), &env, None, &[&PLAN[..PLAN.len() - 1], &["empty.json"]].concat()), "plan");
    assert!(s.path().join("empty.json").is_file());

    // Errors keep their own codes.
    let mut no_key = nightly("x.json", &[]);
    let at = no_key.iter().position(|a| *a == "keys/demo-planner").unwrap();
    no_key[at] = "keys/missing";
    let failed = run(s.path(), &env, None, &no_key);
    let plain = run(s.path(), &env, None, &no_key[..no_key.len() - 1]);
    assert_eq!(code(&failed), code(&plain), "{}", text(&failed.stderr));
    assert!(![0, 40].contains(&code(&failed)) && text(&failed.stderr).contains("error:"));
}

#[test]
fn apply_warns_when_this_clock_is_minutes_off_graphs() {
    // Graph's Date says ten minutes later than this machine's clock.
    let s = setup(fg::Config { date_offset: Some(600), ..Default::default() });
    let (planned, applied) = s.plan_and_apply(&s.graph.env(), None);
    let stderr = text(&applied.stderr);
    assert!(
        stderr.contains("warning: this machine's clock is") && stderr.contains("behind Microsoft Graph's"),
        "{stderr}"
    );
    assert!(stderr.contains("NTP"), "{stderr}");
    assert!(!text(&planned.stderr).contains("clock"), "plan does not judge times by Graph's clock");

    // Within two minutes, nothing is said.
    let s = setup(fg::Config { date_offset: Some(60), ..Default::default() });
    let (_, applied) = s.plan_and_apply(&s.graph.env(), None);
    assert!(!text(&applied.stderr).contains("clock"), "{}", text(&applied.stderr));
}
